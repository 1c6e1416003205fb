"""`--workers N`: one primary process and N worker processes sharing one route table.

    primary.py   binds the public socket(s), spawns and supervises the workers
    worker.py    a worker: accepts on the inherited sockets, applies the feed, reports
    feed.py      the primary table's writes, numbered and acknowledged (read-your-writes)
    channel.py   framed messages over a socketpair
    metrics.py   one registry and one set of process figures over all processes
    api.py       what the REST API awaits of the workers (fresh activity before a GET)
    cpus.py      `--workers auto`: affinity and cgroup quota

With `--workers 1` (the default) none of this runs: one process does everything.

Processes are started with spawn semantics (subprocess: fork + immediate exec of a
fresh interpreter), never by forking the primary: forking after threads exist (the
SQLite store's writer thread) or store connections are open (Redis) copies locks
held by threads that do not exist in the child and sockets it must not share.
Workers never talk to the store; the primary applies every write and feeds them.
"""
