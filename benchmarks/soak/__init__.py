"""`python -m benchmarks soak`: a bounded, JupyterHub-shaped soak of one cfproxy.

Modules, one job each:
  targets.py   the single-user servers behind the proxy: healthy ones (tornado-shaped
               answers, WebSocket echo) and faulty ones (hang, die mid-body, reset,
               trickle, stopped while pooled)
  workload.py  the traffic: the hub's route churn and polling, browsers, WebSockets,
               clients that give up; counts every answer by kind
  sampler.py   what is watched every few seconds: fds, RSS, connections, pooled
               connections, tunnels, event-loop lag, error counts (/metrics, else /proc)
  verdict.py   the pass/fail rules applied after warm-up
  report.py    the table, the JSON file and the PNG plot
  run.py       the command line, the variants, the phases, and stopping everything by PID
"""
