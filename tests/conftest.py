"""Shared fixtures: a `proxy` factory that starts cfproxy subprocesses and always stops them,
and `backend` / `backend2`: an EchoBackend per test module (tests/support/backends.py).

    def test_x(proxy):
        p = proxy("--default-target", url)      # a started, listening ProxyProcess
        p = proxy("--port", "0", wait=False)    # started, not waited for

Processes still running at the end of the test get SIGTERM (then SIGKILL).
"""

from __future__ import annotations

import pytest

from tests.support.backends import EchoBackend
from tests.support.proxy_process import ProxyProcess


@pytest.fixture
def proxy():
    started: list[ProxyProcess] = []

    def start(*args: str, **kwargs) -> ProxyProcess:
        p = ProxyProcess(*args, **kwargs)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.__exit__(None, None, None)


@pytest.fixture(scope="module")
def backend():
    with EchoBackend() as b:
        yield b


@pytest.fixture(scope="module")
def backend2():
    with EchoBackend() as b:
        yield b
