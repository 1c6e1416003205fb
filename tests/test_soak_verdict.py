"""The soak's pass/fail rules (benchmarks/soak/verdict.py), each shown failing on the
samples of a proxy that breaks it, and passing on one that does not."""

from __future__ import annotations

from benchmarks.soak.sampler import Sample, parse_metrics
from benchmarks.soak.verdict import judge

OK_COUNTS = {"ok": 1000, "requests": 1000, "5xx_faulted": 30}


def sample(t: float, phase: str, fds: int = 20, rss: float = 30.0, pooled: int | None = 4,
           upstream: int = 4, client: int = 0) -> Sample:
    return Sample(t, phase, fds, rss, client, upstream, pooled, 0, 1.0, "test", 0, 1000)


def run(end_fds: int = 20, end_rss: float = 30.0, end_pooled: int | None = 4,
        end_upstream: int = 4) -> list[Sample]:
    """warm-up, a pause (the reference), traffic, a last pause ending as given."""
    return [sample(1, "warmup", fds=90), sample(2, "pause", fds=40), sample(3, "pause"),
            sample(4, "traffic", fds=95, rss=32),
            sample(5, "pause", fds=end_fds + 10), sample(6, "pause", fds=end_fds, rss=end_rss,
                                                         pooled=end_pooled, upstream=end_upstream)]


def test_a_proxy_that_returns_to_its_warm_up_level_passes() -> None:
    passed, reasons, figures = judge(run(), OK_COUNTS, proxy_alive=True)
    assert passed, reasons
    assert figures["warmup_rest_fds"] == figures["end_rest_fds"] == 16


def test_leaked_sockets_at_rest_fail_the_fd_rule() -> None:
    passed, reasons, _ = judge(run(end_fds=40), OK_COUNTS, proxy_alive=True)
    assert not passed
    assert "fds did not return to the warm-up level" in reasons[0]


def test_more_idle_pooled_connections_are_not_a_leak() -> None:
    passed, reasons, _ = judge(run(end_fds=40, end_pooled=24, end_upstream=24), OK_COUNTS,
                               proxy_alive=True)
    assert passed, reasons


def test_without_a_pooled_metric_upstream_sockets_at_rest_count_as_pooled() -> None:
    passed, reasons, figures = judge(run(end_fds=30, end_pooled=None, end_upstream=14),
                                     OK_COUNTS, proxy_alive=True)
    assert passed, reasons
    assert figures["pooled_source"] == "/proc upstream sockets"


def test_rss_growth_above_20_mib_fails_and_below_passes() -> None:
    assert not judge(run(end_rss=51.0), OK_COUNTS, True)[0]
    assert judge(run(end_rss=49.0), OK_COUNTS, True)[0]


def test_rss_allowance_is_ten_percent_of_a_large_process() -> None:
    big = run()
    for s in big:
        s.rss_mib += 470.0  # 500 MiB after warm-up: 50 MiB allowed
    big[-1].rss_mib += 45.0
    assert judge(big, OK_COUNTS, True)[0]
    big[-1].rss_mib += 10.0
    passed, reasons, _ = judge(big, OK_COUNTS, True)
    assert not passed and "RSS grew by 55.0 MiB" in reasons[0]


def test_one_5xx_for_a_healthy_target_fails() -> None:
    passed, reasons, _ = judge(run(), {**OK_COUNTS, "5xx_healthy": 1}, True)
    assert not passed and "healthy targets" in reasons[0]


def test_an_api_request_without_an_answer_fails() -> None:
    assert not judge(run(), {**OK_COUNTS, "api_5xx": 1}, True)[0]


def test_a_dead_proxy_or_a_soak_cut_short_fails() -> None:
    assert not judge(run(), OK_COUNTS, proxy_alive=False)[0]
    passed, reasons, _ = judge(run()[:4], OK_COUNTS, True)
    assert not passed and "too few pauses" in reasons[0]


def test_metrics_text_is_parsed_with_labels() -> None:
    m = parse_metrics('# HELP x y\nrequests_proxy{status="502"} 3\nrequests_proxy{status="200"} 9'
                      '\ncfproxy_upstream_idle_connections 4\nnodejs_eventloop_lag_max_seconds'
                      ' 0.012\n')
    assert m["requests_proxy"] == [('{status="502"}', 3.0), ('{status="200"}', 9.0)]
    assert m["cfproxy_upstream_idle_connections"] == [("", 4.0)]
    assert m["nodejs_eventloop_lag_max_seconds"] == [("", 0.012)]
