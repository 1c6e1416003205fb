"""`--workers N` with real processes: one route table over every worker, merged activity and
metrics, supervision (crash, stall, primary death), drain, SIGHUP, binding, bad flags.

Every test runs the real command (a primary and its worker processes) on loopback.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import ssl
import threading
import time

import pytest

from benchmarks.workers_kill import socket_inodes
from tests.api_client import Conn, build, call
from tests.support.backends import wait_until
from tests.support.proxy_process import ProxyProcess, free_port, run_cli, wait_for_port

# --- helpers --------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (scanning /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET over a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def scrape(port: int) -> str:
    return get(port, "/metrics")[1].decode()


def sample(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def worker_of(sock: socket.socket, pids: list[int]) -> int | None:
    """The worker process holding the server side of a client connection to the proxy."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                inode = int(fields[9])
    for pid in pids:
        if inode is not None and inode in socket_inodes(pid):
            return pid
    return None


def connections_on_every_worker(port: int, pids: list[int], each: int) -> dict[int, list[socket.socket]]:
    """Open connections until every worker holds `each` of them (the others are closed)."""
    by_worker: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
    for _ in range(50 * each):
        if all(len(v) >= each for v in by_worker.values()):
            break
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n")  # answered: accepted by now
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += s.recv(65536)
        owner = worker_of(s, pids)
        if owner is None or len(by_worker[owner]) >= each:
            s.close()
        else:
            by_worker[owner].append(s)
    assert all(len(v) >= each for v in by_worker.values()), {k: len(v) for k, v in by_worker.items()}
    return by_worker


def worker_pids(p: ProxyProcess, n: int = 2, timeout: float = 10.0) -> list[int]:
    assert wait_until(lambda: len(children(p.pid)) == n, timeout), children(p.pid)
    return children(p.pid)


@pytest.fixture
def workers(proxy, backend):
    """A proxy with two workers, a metrics port and no default target (a misroute is a 404)."""
    metrics_port = free_port()
    p = proxy("--workers", "2", "--metrics-port", str(metrics_port), "--metrics-ip", "127.0.0.1")
    p.metrics_port = metrics_port
    wait_for_port(metrics_port, proc=p.proc)
    worker_pids(p)
    return p


# --- flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5", "", "100000"])
def test_bad_workers_values_are_one_line_errors_naming_the_flag(value):
    r = run_cli("--workers", value)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--workers" in lines[0] and f"'{value}'" in lines[0]


def test_workers_auto_is_accepted_and_counts_usable_cpus():
    from cfproxy.cli import parse_args
    from cfproxy.workers.cpus import usable_cpus

    assert parse_args(["--workers", "auto"], env={}).config.workers == usable_cpus()
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_one_worker_is_the_single_process_of_today(proxy, backend):
    p = proxy("--default-target", backend.url)
    assert get(p.port, "/x")[0] == 200
    assert children(p.pid) == []


# --- one route table ------------------------------------------------------------------------


def test_every_route_added_is_routed_by_whichever_worker_takes_the_next_connection(workers, backend):
    """1,000 add-then-request pairs, each request over a new connection: none misrouted."""
    misrouted = []
    for i in range(1000):
        r = call(workers.api_port, "POST", f"/api/routes/u{i}",
                 body=b'{"target": "%s"}' % backend.url.encode())
        assert r.status == 201
        status, body = get(workers.port, f"/u{i}/x")
        if status != 200 or f'"/u{i}/x"'.encode() not in body:
            misrouted.append((i, status, body[:80]))
    assert misrouted == []
    # both workers took part (the kernel hands each connection to one of them)
    assert wait_until(lambda: all(
        (sample(scrape(workers.metrics_port), f'cfproxy_worker_requests_total{{worker="{i}"}}') or 0) > 0
        for i in (0, 1)), timeout=5)
    # removal is seen by every worker before the answer, too
    for i in range(50):
        assert call(workers.api_port, "DELETE", f"/api/routes/u{i}").status == 204
        assert get(workers.port, f"/u{i}/x")[0] == 404


def test_a_worker_started_later_gets_the_whole_table_before_it_accepts(workers, backend):
    for i in range(200):
        assert call(workers.api_port, "POST", f"/api/routes/t{i}",
                    body=b'{"target": "%s"}' % backend.url.encode()).status == 201
    for pid in worker_pids(workers):
        os.kill(pid, signal.SIGKILL)
    # while both are replaced, connections wait in the primary's accept queue
    for i in range(0, 200, 7):
        status, body = get(workers.port, f"/t{i}/y")
        assert status == 200 and f'"/t{i}/y"'.encode() in body


# --- activity and metrics -------------------------------------------------------------------


def iso_to_ts(text: str) -> float:
    import calendar

    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000


def test_activity_on_any_worker_is_in_the_api_answer_at_once(workers, backend):
    """GET /api/routes asks every worker for the activity it has not reported yet."""
    assert call(workers.api_port, "POST", "/api/routes/busy",
                body=b'{"target": "%s"}' % backend.url.encode()).status == 201
    for round_ in range(3):
        time.sleep(0.05)
        for _ in range(10):
            assert get(workers.port, "/busy/x")[0] == 200
        last_request = time.time()
        shown = call(workers.api_port, "GET", "/api/routes").json()["/busy"]["last_activity"]
        # (the worker writes last_activity just after the answer left: a few ms of slack)
        assert last_request - 0.03 < iso_to_ts(shown) <= last_request + 0.005, (round_, shown, last_request)
        one = call(workers.api_port, "GET", "/api/routes/busy").json()["last_activity"]
        assert one == shown


def test_metrics_are_summed_over_workers_and_never_go_down_when_one_is_replaced(workers, backend):
    assert call(workers.api_port, "POST", "/api/routes/m",
                body=b'{"target": "%s"}' % backend.url.encode()).status == 201
    for _ in range(30):
        assert get(workers.port, "/m/x")[0] == 200
    mport = workers.metrics_port
    assert wait_until(lambda: sample(scrape(mport), "requests_web") == 30, timeout=5), scrape(mport)
    text = scrape(mport)
    assert sample(text, 'requests_proxy{status="200"}') == 30
    assert sample(text, "find_target_for_req_count") == 30
    assert sample(text, 'cfproxy_request_duration_seconds_count{class="2xx"}') == 30
    assert sample(text, "api_route_add") == 1  # the primary's own counters are in too
    assert sample(text, 'cfproxy_worker_up{worker="0"}') == 1
    assert sample(text, 'cfproxy_worker_up{worker="1"}') == 1
    # gauges come from the workers: their pooled upstream connections, their loops' lag
    assert sample(text, f'cfproxy_upstream_pooled_connections{{target="{backend.url}"}}') >= 1
    assert sample(text, "cfproxy_upstream_idle_connections") >= 1
    assert sample(text, "nodejs_eventloop_lag_seconds") is not None
    cpu_before = sample(text, "process_cpu_seconds_total")

    victim = worker_pids(workers)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: sample(scrape(mport), "cfproxy_worker_restarts_total") == 1, timeout=5)
    assert wait_until(lambda: "serving, " in workers.output(), timeout=5)
    text = scrape(mport)
    assert sample(text, "requests_web") == 30  # the ended worker's counts are kept
    assert sample(text, "find_target_for_req_count") == 30
    assert sample(text, "process_cpu_seconds_total") >= cpu_before
    for _ in range(10):
        assert get(workers.port, "/m/x")[0] == 200
    assert wait_until(lambda: sample(scrape(mport), "requests_web") == 40, timeout=5)


def test_process_figures_cover_every_process(workers):
    text = scrape(workers.metrics_port)
    rss = sample(text, "process_resident_memory_bytes")
    with open(f"/proc/{workers.pid}/status") as f:
        primary_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert rss > 2 * primary_rss  # the primary and two workers, each a full interpreter


# --- supervision ----------------------------------------------------------------------------


def test_a_killed_worker_is_logged_and_replaced_while_the_other_keeps_serving(workers, backend):
    assert call(workers.api_port, "POST", "/api/routes/k",
                body=b'{"target": "%s"}' % backend.url.encode()).status == 201
    pids = worker_pids(workers)
    # a keep-alive connection on some worker, used before and after
    kept = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=10)
    kept.request("GET", "/k/1")
    assert kept.getresponse().read()
    os.kill(pids[1], signal.SIGKILL)
    out = workers.wait_for_output(f"(pid {pids[1]}) was killed by signal 9 (SIGKILL); starting a new one")
    assert re.search(r"Worker \d \(pid \d+\) serving, \d+ ms after its start", workers.wait_for_output(
        "ms after its start", timeout=5)), out
    new = worker_pids(workers)
    assert pids[1] not in new and pids[0] in new
    for i in range(20):
        assert get(workers.port, f"/k/{i}")[0] == 200
    try:
        kept.request("GET", "/k/2")
        kept.getresponse().read()  # fine if it lived on the surviving worker
    except (ConnectionError, http.client.HTTPException):
        pass
    kept.close()


def test_a_worker_that_does_not_apply_a_write_is_replaced_and_the_answer_is_not_held(workers, backend):
    pids = worker_pids(workers)
    os.kill(pids[0], signal.SIGSTOP)  # alive, but applies nothing
    try:
        t0 = time.monotonic()
        r = call(workers.api_port, "POST", "/api/routes/s",
                 body=b'{"target": "%s"}' % backend.url.encode())
        took = time.monotonic() - t0
        assert r.status == 201
        assert 1.5 < took < 3.5, took
        workers.wait_for_output(f"(pid {pids[0]}) did not apply write")
        assert wait_until(lambda: not alive(pids[0]), timeout=5)
        assert wait_until(lambda: len(children(workers.pid)) == 2 and pids[0] not in children(workers.pid),
                          timeout=5)
        for i in range(10):
            assert get(workers.port, f"/s/{i}")[0] == 200
    finally:
        try:
            os.kill(pids[0], signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_worker_that_does_not_answer_a_read_is_replaced_and_the_read_is_not_held(workers):
    pids = worker_pids(workers)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert call(workers.api_port, "GET", "/api/routes").status == 200
        assert 1.5 < time.monotonic() - t0 < 3.5
        workers.wait_for_output(f"(pid {pids[1]}) did not answer within 2.0 s; replacing it")
        assert wait_until(lambda: len(children(workers.pid)) == 2 and pids[1] not in children(workers.pid),
                          timeout=5)
        t0 = time.monotonic()
        assert call(workers.api_port, "GET", "/api/routes").status == 200
        assert time.monotonic() - t0 < 0.5
    finally:
        try:
            os.kill(pids[1], signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_primary_killed_with_sigkill_leaves_no_worker_and_frees_the_port(proxy):
    p = proxy("--workers", "2")
    pids = worker_pids(p)
    p.proc.kill()
    p.proc.wait(5)
    assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout=2.0), pids
    with socket.socket() as s:  # nothing keeps the public port: a new proxy can take it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p.port))
        s.listen()


def test_sigterm_drains_every_worker_and_exits_0(proxy, backend):
    p = proxy("--workers", "2", "--default-target", backend.url, "--shutdown-timeout", "5000")
    pids = worker_pids(p)
    results: list = []

    def slow(i: int) -> None:
        try:
            results.append(get(p.port, f"/slow{i}?x-delay=1")[0])
        except Exception as e:  # noqa: BLE001
            results.append(repr(e))

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(backend.requests) and sum(
        1 for r in backend.requests if r.url.startswith("/slow")) >= 6, timeout=5)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    for t in threads:
        t.join(5)
    assert results == [200] * 6
    assert time.monotonic() - t0 < 4
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()


def test_drain_is_bounded_by_the_shutdown_timeout(proxy, backend):
    p = proxy("--workers", "2", "--default-target", backend.url, "--shutdown-timeout", "300")
    worker_pids(p)
    outcome: list = []

    def hang() -> None:
        try:
            outcome.append(get(p.port, "/h?x-action=hang")[0])
        except (OSError, http.client.HTTPException) as e:
            outcome.append(type(e).__name__)

    hung = threading.Thread(target=hang)
    hung.start()
    assert wait_until(lambda: any(r.url.startswith("/h") for r in backend.requests), timeout=5)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert time.monotonic() - t0 < 2.5
    hung.join(5)
    assert outcome and outcome[0] != 200  # cut at the deadline, not answered


def test_pid_file_holds_the_primary(proxy, tmp_path):
    pid_file = tmp_path / "proxy.pid"
    p = proxy("--workers", "2", "--pid-file", str(pid_file))
    worker_pids(p)
    assert int(pid_file.read_text()) == p.pid


def test_sighup_reloads_certificates_in_every_worker(proxy, backend, tmp_path):
    import shutil

    from cryptography import x509

    from tests.support.certs import make_certs

    certs = make_certs(str(tmp_path / "a"))
    other = make_certs(str(tmp_path / "b"), name="other")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    p = proxy("--workers", "2", "--ssl-cert", cert, "--ssl-key", key, "--default-target", backend.url)
    worker_pids(p)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def serials(n: int = 12) -> set[int]:
        seen = set()
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
                with ctx.wrap_socket(raw) as s:
                    seen.add(x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number)
        return seen

    assert serials() == {certs.serial_of("server_cert")}
    shutil.copy(other.server_cert, cert)
    shutil.copy(other.server_key, key)
    before = p.output().count("Reloaded TLS certificates")
    p.signal(signal.SIGHUP)
    assert wait_until(lambda: p.output().count("Reloaded TLS certificates") >= before + 3, timeout=5), \
        p.output()  # the primary and both workers
    assert serials() == {other.serial_of("server_cert")}
    assert p.proc.poll() is None


# --- binding --------------------------------------------------------------------------------


def test_a_port_somebody_else_holds_is_an_error_and_no_worker_is_left(proxy):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        p = proxy("--workers", "2", "--port", str(port), wait=False)
        assert p.proc.wait(15) == 1
        out = p.output()
        assert f"cannot listen on 127.0.0.1:{port} (--ip/--port)" in out, out
        assert children(p.pid) == []


def test_a_second_cfproxy_cannot_join_the_port_of_a_running_one(workers):
    other = ProxyProcess("--workers", "2", "--port", str(workers.port), wait=False).start()
    try:
        assert other.proc.wait(15) == 1
        assert "cannot listen on" in other.output()
    finally:
        other.__exit__(None, None, None)


def test_workers_serve_a_unix_socket(proxy, backend, tmp_path):
    path = str(tmp_path / "proxy.sock")
    p = proxy("--workers", "2", "--socket", path, "--default-target", backend.url)
    worker_pids(p)
    for _ in range(5):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"GET /via-unix HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"/via-unix" in data
    p.stop()
    assert not os.path.exists(path)


# --- stores ----------------------------------------------------------------------------------


def test_workers_route_what_a_redis_store_holds(proxy, backend):
    from tests.support.redis_server import redis_server_binary, redis_url

    if not os.environ.get("REDIS_URL") and redis_server_binary() is None:
        pytest.skip("no redis-server")
    with redis_url() as url:
        prefix = f"wk{os.getpid()}{time.monotonic_ns()}"
        store = f"{url}?prefix={prefix}" if "?" not in url else f"{url}&prefix={prefix}"
        p = proxy("--workers", "2", "--storage-backend", store)
        worker_pids(p)
        for i in range(20):
            assert call(p.api_port, "POST", f"/api/routes/r{i}",
                        body=b'{"target": "%s"}' % backend.url.encode()).status == 201
            status, body = get(p.port, f"/r{i}/z")
            assert status == 200 and f'"/r{i}/z"'.encode() in body
        # a second replica (single process) writing to the same Redis: its writes reach
        # this replica's workers through the primary's change feed
        with ProxyProcess("--storage-backend", store) as replica:
            assert call(replica.api_port, "POST", "/api/routes/from-replica",
                        body=b'{"target": "%s"}' % backend.url.encode()).status == 201
            assert wait_until(lambda: get(p.port, "/from-replica/q")[0] == 200, timeout=5)


def test_workers_route_what_a_sqlite_store_holds_across_a_restart(proxy, backend, tmp_path):
    store = f"sqlite:///{tmp_path}/routes.db"
    p = proxy("--workers", "2", "--storage-backend", store)
    worker_pids(p)
    for i in range(10):
        assert call(p.api_port, "POST", f"/api/routes/q{i}",
                    body=b'{"target": "%s"}' % backend.url.encode()).status == 201
        assert get(p.port, f"/q{i}/x")[0] == 200
    time.sleep(0.05)
    before = time.time()  # q3's earlier request ended >= 50 ms before this
    assert get(p.port, "/q3/late")[0] == 200
    seen = time.time()
    assert p.stop() == 0  # the workers' activity reaches the store's last flush
    again = proxy("--workers", "2", "--storage-backend", store)
    worker_pids(again)
    la = iso_to_ts(call(again.api_port, "GET", "/api/routes/q3").json()["last_activity"])
    # the late request's activity, written by the worker just after its answer, survived
    # (bounds loose enough for a loaded machine, tight enough to exclude the earlier request)
    assert before - 0.005 < la <= seen + 0.5
    for i in range(10):
        status, body = get(again.port, f"/q{i}/y")
        assert status == 200 and f'"/q{i}/y"'.encode() in body


def test_a_worker_killed_under_load_leaves_the_connections_of_the_others_alone(workers, backend):
    """2,000 routes, 6 busy keep-alive connections on each worker; one worker is SIGKILLed:
    the other worker's connections see no error at all, and a replacement serves quickly."""
    import asyncio

    routes = 2000
    with Conn(workers.api_port) as c:
        for i in range(routes):
            c.send(build("POST", f"/api/routes/l{i}", body=b'{"target": "%s"}' % backend.url.encode()))
            assert c.read_response().status == 201
    victim, other = worker_pids(workers)
    socks = connections_on_every_worker(workers.port, [victim, other], each=6)
    log: list[tuple[int, float, bool]] = []  # (worker pid, time, ok)

    async def client(pid: int, sock: socket.socket, idx: int, stop_at: float) -> None:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        n = 0
        try:
            while time.time() < stop_at:
                n += 1
                writer.write(b"GET /l%d/x HTTP/1.1\r\nHost: x\r\n\r\n" % ((idx * 97 + n) % routes))
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                log.append((pid, time.time(), head.startswith(b"HTTP/1.1 200")))
        except (OSError, asyncio.IncompleteReadError):
            log.append((pid, time.time(), False))
        finally:
            writer.close()

    async def scenario() -> float:
        start = time.time()
        tasks = [asyncio.ensure_future(client(pid, s, i, start + 2.5))
                 for pid, group in socks.items() for i, s in enumerate(group)]
        await asyncio.sleep(0.8)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        await asyncio.gather(*tasks)
        return killed_at

    killed_at = asyncio.run(scenario())
    assert all(ok for pid, _, ok in log if pid == other)  # not one error on the other worker
    assert sum(1 for pid, t, ok in log if pid == other and t > killed_at + 1.0) > 50  # kept going
    assert [t for pid, t, ok in log if pid == victim and not ok]  # the victim's were cut
    m = re.search(r"Worker \d \(pid \d+\) serving, (\d+) ms after its start",
                  workers.wait_for_output("ms after its start", timeout=5))
    assert int(m.group(1)) < 3000


def test_a_worker_that_keeps_dying_young_is_restarted_with_a_growing_back_off(workers):
    seen = set(worker_pids(workers))
    for _ in range(3):
        current = worker_pids(workers)
        new = [pid for pid in current if pid not in seen] or current[:1]
        seen.update(current)
        os.kill(new[0], signal.SIGKILL)  # dies within 2 s of its start (except the first)
        assert wait_until(lambda: len(set(children(workers.pid)) - seen) == 1, timeout=5)
    out = workers.output()
    assert "starting a new one in 0.1 s" in out and "starting a new one in 0.2 s" in out, out
    assert get(workers.port, "/nothing")[0] == 404  # still serving
