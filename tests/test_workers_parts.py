"""The pieces of `--workers N` that need no process: CPU counting, metric merging, the channel's
framing and the table feed's batching and acknowledgements."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from cfproxy.metrics import Metrics, Summary
from cfproxy.routing.table import RouteTable
from cfproxy.workers.channel import MAX_FRAME, ChannelProtocol, encode
from cfproxy.workers.cpus import cgroup_cpu_limit, usable_cpus
from cfproxy.workers.feed import Feed, FeedTable, Subscriber, apply_ops
from cfproxy.workers.metrics import merge_into, merged_metrics

# --- --workers auto -----------------------------------------------------------------------


def fake_cgroup(tmp_path, proc_lines: str, files: dict[str, str]) -> tuple[str, str]:
    root = tmp_path / "sys"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text(proc_lines)
    return str(root), str(proc)


def test_cgroup_v2_quota_rounds_up_to_whole_cpus(tmp_path):
    root, proc = fake_cgroup(tmp_path, "0::/kubepods/pod1\n",
                             {"kubepods/pod1/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 2


def test_cgroup_v2_takes_the_tightest_ancestor(tmp_path):
    root, proc = fake_cgroup(tmp_path, "0::/a/b\n", {
        "a/b/cpu.max": "max 100000\n", "a/cpu.max": "100000 100000\n", "cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1
    assert usable_cpus(root, proc) == 1  # a 1-CPU pod gets one process, whatever the node has


def test_no_quota_means_the_affinity_mask(tmp_path):
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_cgroup_v1_cfs_quota(tmp_path):
    root, proc = fake_cgroup(tmp_path, "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1
    root, proc = fake_cgroup(tmp_path / "2", "2:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, proc) is None


# --- merging metrics ------------------------------------------------------------------------


def test_summaries_merge_to_the_summary_of_all_observations():
    rng = random.Random(7)
    parts = [Summary() for _ in range(3)]
    everything = Summary()
    for i, part in enumerate(parts):
        for _ in range(5000 * (i + 1)):
            v = rng.lognormvariate(-9 + i, 0.5)
            part.observe(v)
            everything.observe(v)
    merged = Summary()
    for part in parts:
        merged.merge(part)
    assert merged.count == everything.count
    assert merged.sum == pytest.approx(everything.sum)
    for q in (0.01, 0.5, 0.9, 0.99, 0.999):
        assert merged.quantile(q) == pytest.approx(everything.quantile(q), rel=0.05)
    assert merged.centroid_count() <= 250  # bounded, however many merges


def test_every_kind_of_metric_merges_by_its_type():
    a, b = Metrics(), Metrics()
    a.requests_web, b.requests_web = 3, 4
    a.requests_proxy[200] = 2
    b.requests_proxy[200] = 5
    b.requests_proxy[503] = 1
    a.observe_request(0.002, 200)
    b.observe_request(0.002, 200)
    b.observe_request(3.0, 503)
    b.find_target_for_req.observe(1e-5)
    total = merged_metrics([a, b])
    assert total.requests_web == 7
    assert dict(total.requests_proxy) == {200: 7, 503: 1}
    assert sum(total.request_latency_counts[2]) == 2 and sum(total.request_latency_counts[5]) == 1
    assert total.request_latency_sums[5] == 3.0
    assert total.find_target_for_req.count == 1
    assert a.requests_web == 3 and dict(a.requests_proxy) == {200: 2}  # parts unchanged


def test_a_metric_added_to_the_registry_later_merges_too():
    class Bigger(Metrics):
        def __init__(self) -> None:
            super().__init__()
            self.new_counter = 0
            self.new_labelled: dict = {}
            self.new_summary = Summary()

    a, b = Bigger(), Bigger()
    a.new_counter, b.new_counter = 1, 2
    b.new_labelled["x"] = 3
    b.new_summary.observe(0.5)
    total = Bigger()
    merge_into(total, a)
    merge_into(total, b)
    assert total.new_counter == 3 and total.new_labelled == {"x": 3}
    assert total.new_summary.count == 1


# --- the channel -----------------------------------------------------------------------------


def test_channel_frames_survive_any_split_of_the_stream():
    messages = [("ops", i, [("a", f"/p{i}", {"target": "http://x"}, 1.5)]) for i in range(50)]
    stream = b"".join(encode(m) for m in messages)
    got: list = []
    proto = ChannelProtocol(got.append, lambda reason: got.append(("closed", reason)))
    rng = random.Random(1)
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 300)
        proto.data_received(stream[pos:pos + n])
        pos += n
    assert got == messages


def test_an_oversized_frame_closes_the_channel():
    closed: list = []
    proto = ChannelProtocol(lambda m: None, closed.append)
    proto.data_received((MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    assert closed and "exceeds" in closed[0]


# --- the feed -----------------------------------------------------------------------------


def test_writes_in_one_loop_iteration_travel_as_one_numbered_batch():
    async def scenario() -> None:
        table = FeedTable()
        sent: list[bytes] = []
        feed = Feed(table, lambda sub, seq: None)
        feed.subscribe(Subscriber(sent.append))
        table.add("/a", {"target": "http://127.0.0.1:1"})
        table.add("/b", {"target": "http://127.0.0.1:2"})
        table.remove("/a")
        assert sent == []
        await asyncio.sleep(0)
        assert len(sent) == 1 and feed.seq == 1
        got: list = []
        ChannelProtocol(got.append, lambda r: None).data_received(sent[0])
        kind, seq, ops = got[0]
        assert (kind, seq) == ("ops", 1)
        replica = RouteTable()
        apply_ops(replica, ops)
        assert [r.prefix for r in replica] == ["/b"]
        assert replica.get("/b").last_activity == table.get("/b").last_activity

    asyncio.run(scenario())


def test_snapshot_then_batches_rebuild_the_same_table():
    async def scenario() -> None:
        table = FeedTable(host_routing=True)
        feed = Feed(table, lambda sub, seq: None)
        for i in range(20):
            table.add(f"/Host{i}.example/p", {"target": f"http://127.0.0.1:{1000 + i}"})
        _, seq, routes = feed.snapshot()
        replica = RouteTable(host_routing=True)
        for prefix, data, la in routes:
            replica.add(prefix, data, la)
        sent: list[bytes] = []
        feed.subscribe(Subscriber(sent.append))
        table.remove("/host3.example/p")
        table.clear()
        table.add("/z", {"target": "http://127.0.0.1:9"})
        feed.flush()
        got: list = []
        ChannelProtocol(got.append, lambda r: None).data_received(b"".join(sent))
        for _, _, ops in got:
            apply_ops(replica, ops)
        assert [(r.prefix, r.target.url) for r in replica] == [(r.prefix, r.target.url) for r in table]
        assert got[-1][1] == seq + 1

    asyncio.run(scenario())


def test_the_barrier_waits_for_live_workers_only_and_gives_up_after_the_timeout():
    async def scenario() -> None:
        table = FeedTable()
        timed_out: list = []
        feed = Feed(table, lambda sub, seq: timed_out.append((sub, seq)), ack_timeout=0.2)
        prompt, silent, starting = (Subscriber(lambda f: None) for _ in range(3))
        for sub in (prompt, silent, starting):
            feed.subscribe(sub)
        prompt.live = silent.live = True
        table.add("/a", {"target": "http://127.0.0.1:1"})
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, prompt.acknowledge, 1)
        t0 = loop.time()
        await feed.applied_everywhere()
        assert 0.15 < loop.time() - t0 < 0.5
        assert timed_out == [(silent, 1)]
        # all acknowledged: no wait at all
        silent.acknowledge(1)
        t0 = loop.time()
        await feed.applied_everywhere()
        assert loop.time() - t0 < 0.05

    asyncio.run(scenario())


# --- the benchmark's --workers dimension ---------------------------------------------------


def test_benchmark_workers_flag_reaches_cfproxys_command_line(tmp_path):
    from benchmarks.peers import CFProxy
    from benchmarks.runner import Run, parse_args

    args = parse_args(["--quick", "--peers", "cfproxy", "--only", "small-get-10", "--workers", "2"])
    assert args.workers == 2
    runner = Run.__new__(Run)  # no backends started: only make_peer is exercised
    runner.args, runner.backends, runner.tmp = args, None, str(tmp_path)
    peer = runner.make_peer("cfproxy")
    assert isinstance(peer, CFProxy)
    peer.backends = type("B", (), {"http_url": "http://127.0.0.1:9"})()
    cmd = peer.command(8000, 8001, ())
    assert cmd[cmd.index("--workers") + 1] == "2"
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])
