"""The in-process profiling driver (tests/support/exchange_driver.py) still drives every
scenario through ClientProtocol: each exchange is answered with 200 (it asserts so)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import exchange_driver


@pytest.mark.parametrize("scenario", ["plain", "lean", "browser", "browser-session", "tornado",
                                      "tornado-cookie", "tornado-chunked", "nginx-chunked", "routes",
                                      "routes-one"])
def test_driver_runs_every_scenario(scenario):
    asyncio.run(exchange_driver.run(scenario, 50))
