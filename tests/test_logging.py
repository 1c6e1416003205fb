"""Logging: CHP's line format, levels, colour rules, and the uncaught-exception handler (reference 7)."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from cfproxy.log import log, setup_logging
from cfproxy.server import _uncaught_exception, new_event_loop

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[ConfigProxy\] (error|warn|info|debug): \S.*$"
)
ANSI = "\x1b["


@pytest.fixture(autouse=True)
def restore_logger():
    """setup_logging() replaces the process-wide handler; put the old one back."""
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def stopped_output(proxy, *args: str, **kwargs) -> str:
    """Start the proxy, stop it with SIGTERM, return everything it printed."""
    p = proxy(*args, **kwargs)
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    return p.output()


def test_every_line_matches_chp_format(proxy, tmp_path):
    out = stopped_output(proxy, "--default-target", "http://127.0.0.1:9", "--pid-file",
                         str(tmp_path / "p.pid"), "--log-level", "debug", token=None)
    lines = out.splitlines()
    assert len(lines) >= 6
    for line in lines:
        assert LINE.match(line), repr(line)


def test_no_colour_when_not_a_terminal(proxy):
    out = stopped_output(proxy)
    assert ANSI not in out


def test_force_color_colours_the_level_word_like_chp(proxy):
    out = stopped_output(proxy, token=None, env={"FORCE_COLOR": "1"})
    assert "[ConfigProxy] \x1b[33mwarn\x1b[39m: REST API is not authenticated." in out
    assert "[ConfigProxy] \x1b[32minfo\x1b[39m: Proxying" in out


def test_debug_level_shows_debug_lines(proxy, tmp_path):
    pid_file = tmp_path / "p.pid"
    out = stopped_output(proxy, "--pid-file", str(pid_file), "--log-level", "debug")
    assert f"debug: Removing {pid_file}" in out


def test_info_level_hides_debug_lines(proxy, tmp_path):
    out = stopped_output(proxy, "--pid-file", str(tmp_path / "p.pid"))
    assert "debug:" not in out and "info: Proxying" in out


def test_warn_level_hides_info_but_shows_warnings(proxy):
    out = stopped_output(proxy, "--log-level", "warn", token=None)
    assert "warn: REST API is not authenticated." in out
    assert "info:" not in out


def test_error_level_hides_info_and_warn(proxy):
    out = stopped_output(proxy, "--log-level", "error", token=None)
    assert "info:" not in out and "warn:" not in out


def test_error_level_still_shows_errors(proxy, tmp_path):
    sock = tmp_path / "in-the-way"
    sock.write_text("x")
    p = proxy("--api-socket", str(sock), "--log-level", "error", wait=False)
    assert p.proc.wait(10) == 1
    assert "error: cannot listen on" in p.output()


def test_uncaught_exception_in_a_callback_is_logged_and_the_loop_keeps_running(capsys):
    setup_logging("info")
    loop = new_event_loop()
    try:
        loop.set_exception_handler(_uncaught_exception)
        ran_after = []

        def boom() -> None:
            raise RuntimeError("kaboom")

        async def main() -> None:
            loop.call_soon(boom)
            await asyncio.sleep(0.01)
            ran_after.append(True)

        loop.run_until_complete(main())
    finally:
        loop.close()
    out = capsys.readouterr().out
    assert ran_after == [True]
    assert "error: Uncaught Exception: kaboom" in out
    assert "RuntimeError: kaboom" in out  # the stack follows, as CHP's


@pytest.mark.parametrize("level,shown", [("error", ["error"]), ("warn", ["error", "warn"]),
                                         ("info", ["error", "warn", "info"]),
                                         ("debug", ["error", "warn", "info", "debug"])])
def test_levels_filter_in_process(capsys, level, shown):
    setup_logging(level)
    log.error("e")
    log.warning("w")
    log.info("i")
    log.debug("d")
    out = capsys.readouterr().out
    words = [m.group(1) for m in map(LINE.match, out.splitlines()) if m]
    assert words == shown


@pytest.fixture(scope="module")
def backend():
    from tests.support.backends import EchoBackend

    with EchoBackend() as b:
        yield b


def _get(port: int, path: str) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def test_debug_level_logs_each_proxied_request_without_query(proxy, backend):
    p = proxy("--default-target", backend.url, "--log-level", "debug")
    assert _get(p.port, "/some/page?secret=1") == 200
    out = p.wait_for_output("PROXY WEB")
    assert f"debug: PROXY WEB /some/page to {backend.url}" in out
    assert "secret=1" not in out


def test_info_level_has_no_access_log_for_successes(proxy, backend):
    p = proxy("--default-target", backend.url)
    assert _get(p.port, "/quiet") == 200
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert "/quiet" not in p.output()


def test_proxy_errors_are_logged_at_error_level(proxy):
    p = proxy("--default-target", "http://127.0.0.1:9", "--log-level", "error")
    assert _get(p.port, "/down") == 503
    out = p.wait_for_output("503 GET /down")
    assert re.search(r"\] error: 503 GET /down ", out)
