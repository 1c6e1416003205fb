"""--storage-backend sqlite:///...: routes survive a restart, writes are answered after the
commit, one cfproxy per file, bad files refuse to start, a full disk fails the write with a
clear 500 and the proxy goes on routing (real cfproxy processes, real SQLite files)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import orjson
import pytest

from tests.api_client import Conn, build, call
from tests.support.proxy_process import ProxyProcess, run_cli


def url(path, **options) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def post(api: int, path: str, data: dict):
    return call(api, "POST", f"/api/routes{path}", orjson.dumps(data))


def routes(api: int) -> dict:
    r = call(api, "GET", "/api/routes")
    assert r.status == 200
    return r.json()


def test_routes_data_order_and_activity_survive_a_restart(tmp_path, backend):
    db = tmp_path / "routes.db"
    with ProxyProcess("--storage-backend", url(db)) as p:
        assert post(p.api_port, "/a", {"target": backend.url, "user": "zoë", "n": 2**60}).status == 201
        assert post(p.api_port, "/b", {"target": backend.url}).status == 201
        assert post(p.api_port, "/c", {"target": backend.url}).status == 201
        assert post(p.api_port, "/a", {"target": backend.url, "user": "again"}).status == 201
        assert call(p.api_port, "DELETE", "/api/routes/b").status == 204
        before = routes(p.api_port)
        time.sleep(0.01)
        assert call(p.port, "GET", "/c/x").status == 200  # moves /c's last_activity
        time.sleep(1.5)  # one flush interval
        moved = routes(p.api_port)["/c"]["last_activity"]
        assert moved > before["/c"]["last_activity"]
    with ProxyProcess("--storage-backend", url(db)) as p:
        after = routes(p.api_port)
        assert list(after) == ["/a", "/c"]  # a replaced route keeps its place
        assert after["/a"]["user"] == "again"
        assert after["/c"]["last_activity"] == moved
        assert call(p.port, "GET", "/c/x").status == 200  # routed straight from the file
        assert "Loaded 2 route(s)" in p.output()


def test_absolute_path_is_four_slashes_and_the_file_has_a_schema_stamp(tmp_path, backend):
    db = tmp_path / "abs.db"
    assert str(db).startswith("/")
    with ProxyProcess("--storage-backend", f"sqlite:///{db}") as p:  # sqlite:/// + /tmp/...
        assert post(p.api_port, "/x", {"target": backend.url}).status == 201
        conn = sqlite3.connect(db)  # WAL: readable beside the running proxy
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT prefix FROM routes").fetchall() == [("/x",)]
        finally:
            conn.close()


def test_relative_path_is_three_slashes_from_the_working_directory(tmp_path, backend):
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "") + os.pathsep + os.getcwd()}
    p = ProxyProcess("--storage-backend", "sqlite:///rel.db", env=env)
    p_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with p:
            assert post(p.api_port, "/x", {"target": backend.url}).status == 201
    finally:
        os.chdir(p_cwd)
    assert (tmp_path / "rel.db").exists()


def test_a_second_cfproxy_on_a_held_file_exits_1_saying_so(tmp_path):
    db = tmp_path / "routes.db"
    with ProxyProcess("--storage-backend", url(db)) as first:
        second = ProxyProcess("--storage-backend", url(db), wait=False).start()
        assert second.proc.wait(15) == 1
        out = second.output()
        errors = [ln for ln in out.splitlines() if "error" in ln.lower()]
        assert len(errors) == 1, out
        assert "--storage-backend" in errors[0] and "in use by another cfproxy" in errors[0]
        assert f"pid {first.pid}" in errors[0]


def test_sigterm_releases_the_file_before_the_drain_so_a_successor_starts_at_once(tmp_path, backend):
    db = tmp_path / "routes.db"
    old = ProxyProcess("--storage-backend", url(db), "--shutdown-timeout", "5000").start()
    try:
        assert post(old.api_port, "/kept", {"target": backend.url}).status == 201
        # a request in flight keeps the old process draining for a while
        with Conn(old.port) as slow:
            slow.send(b"GET /kept/slow HTTP/1.1\r\nHost: x\r\nx-delay: 2\r\n\r\n")
            time.sleep(0.2)
            old.signal(signal.SIGTERM)
            time.sleep(0.3)
            assert old.proc.poll() is None  # still draining
            with ProxyProcess("--storage-backend", url(db)) as new:
                assert "/kept" in routes(new.api_port)
            assert slow.read_response().status == 200  # the drain finished the request
    finally:
        old.stop()


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_corrupt_file_refuses_to_start_naming_the_flag(tmp_path, content):
    db = tmp_path / "routes.db"
    db.write_bytes(content)
    r = run_cli("--storage-backend", url(db), "--port", "0", "--api-port", "0")
    assert r.returncode == 1
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "--storage-backend" in ln]
    assert len(errors) == 1 and str(db) in errors[0], lines
    assert db.read_bytes() == content  # never replaced by an empty database


def test_a_foreign_sqlite_database_is_not_taken_over(tmp_path):
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    r = run_cli("--storage-backend", url(db), "--port", "0", "--api-port", "0")
    assert r.returncode == 1 and "not a cfproxy route database" in r.stdout + r.stderr


def test_a_missing_directory_refuses_to_start(tmp_path):
    r = run_cli("--storage-backend", url(tmp_path / "nope" / "routes.db"), "--port", "0",
                "--api-port", "0")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "--storage-backend" in out and "does not exist" in out


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "routes.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    r = run_cli("--storage-backend", url(db), "--port", "0", "--api-port", "0")
    assert r.returncode == 1 and "newer cfproxy" in r.stdout + r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_refuses_to_start(tmp_path):
    db = tmp_path / "routes.db"
    with ProxyProcess("--storage-backend", url(db)):
        pass
    db.chmod(0)
    r = run_cli("--storage-backend", url(db), "--port", "0", "--api-port", "0")
    assert r.returncode == 1 and "--storage-backend" in r.stdout + r.stderr


def test_bad_url_options_name_the_flag(tmp_path):
    r = run_cli("--storage-backend", url(tmp_path / "r.db", synchronous="sometimes"),
                "--port", "0", "--api-port", "0")
    assert r.returncode == 1 and "--storage-backend" in r.stderr + r.stdout
    assert "synchronous" in r.stderr + r.stdout


def test_a_full_disk_fails_the_write_with_a_clear_500_and_routing_goes_on(tmp_path, backend):
    db = tmp_path / "routes.db"
    with ProxyProcess("--storage-backend", url(db, max_page_count=8, flush_interval=0.2)) as p:
        api = p.api_port
        assert post(api, "/first", {"target": backend.url}).status == 201
        big = "x" * 1500
        statuses = []
        for i in range(40):
            r = post(api, f"/fill/{i}", {"target": backend.url, "pad": big})
            statuses.append(r.status)
            if r.status != 201:
                break
        assert statuses[-1] == 500, statuses
        assert "database or disk is full" in r.text and "SQLite" in r.text
        assert f"/fill/{len(statuses) - 1}" not in routes(api)  # not routed, not listed
        assert call(p.port, "GET", "/first/x").status == 200  # routing goes on from memory
        assert call(p.port, "GET", "/fill/0/x").status == 200
        # space again: the next write works
        for i in range(len(statuses) - 1):
            assert call(api, "DELETE", f"/api/routes/fill/{i}").status == 204
        assert post(api, "/after", {"target": backend.url}).status == 201
        time.sleep(0.5)  # activity flushes keep working too
    with ProxyProcess("--storage-backend", url(db)) as p:
        assert sorted(routes(p.api_port)) == ["/after", "/first"]


def test_concurrent_writes_are_all_there_after_a_restart(tmp_path, backend):
    """16 connections posting at once (their commits are shared): every 201 is durable."""
    import threading

    db = tmp_path / "routes.db"
    acked: list[str] = []
    lock = threading.Lock()
    with ProxyProcess("--storage-backend", url(db)) as p:
        def worker(n: int) -> None:
            with Conn(p.api_port) as c:
                for i in range(25):
                    path = f"/c/{n}/{i}"
                    c.send(build("POST", f"/api/routes{path}", orjson.dumps({"target": backend.url})))
                    if c.read_response().status == 201:
                        with lock:
                            acked.append(path)
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        p.proc.kill()  # SIGKILL: nothing acknowledged may be lost
        p.proc.wait(5)
    assert len(acked) == 400
    with ProxyProcess("--storage-backend", url(db)) as p:
        assert set(acked) <= set(routes(p.api_port))

