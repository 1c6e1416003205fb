"""Deadlines on the shared timer wheel (cfproxy.proxy.flow), on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from cfproxy.proxy.deadline import Deadline, TimerWheel, timer_wheel

SLOT = 1 / TimerWheel.RESOLUTION


def run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def fired_at(set_up, wait: float = 0.5) -> dict:
    """Run set_up(loop, record) and return {name: seconds after start} of what fired."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got: dict = {}

    def record(name):
        return lambda: got.setdefault(name, loop.time() - t0)

    set_up(loop, record)
    await asyncio.sleep(wait)
    return got


def test_deadline_fires_once_after_it_expires_and_at_most_a_slot_late():
    def set_up(loop, record):
        Deadline(loop, record("d")).set(0.1)

    got = run(fired_at(set_up))
    assert 0.1 - 0.002 <= got["d"] <= 0.1 + SLOT + 0.05


def test_pushed_forward_deadline_fires_at_the_new_time():
    def set_up(loop, record):
        d = Deadline(loop, record("d"))
        d.set(0.05)
        loop.call_later(0.03, d.set, 0.2)  # -> ~0.23

    got = run(fired_at(set_up))
    assert got["d"] >= 0.22


def test_deadline_moved_earlier_fires_at_the_earlier_time():
    def set_up(loop, record):
        d = Deadline(loop, record("d"))
        d.set(5.0)
        d.set(0.05)

    got = run(fired_at(set_up, wait=0.3))
    assert got["d"] < 0.05 + SLOT + 0.05


@pytest.mark.parametrize("how", ["clear", "cancel"])
def test_cleared_or_cancelled_deadline_never_fires(how):
    def set_up(loop, record):
        d = Deadline(loop, record("d"))
        d.set(0.05)
        getattr(d, how)()
        Deadline(loop, record("other")).set(0.05)

    got = run(fired_at(set_up, wait=0.2))
    assert "d" not in got and "other" in got


def test_deadline_set_again_after_firing_fires_again():
    async def main():
        loop = asyncio.get_running_loop()
        hits = []
        d = Deadline(loop, lambda: hits.append(loop.time()))
        d.set(0.02)
        await asyncio.sleep(0.15)
        d.set(0.02)
        await asyncio.sleep(0.15)
        return hits

    assert len(run(main())) == 2


def test_a_failing_callback_does_not_stop_the_others_in_its_slot():
    errors = []

    def set_up(loop, record):
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx["exception"]))

        def boom():
            raise RuntimeError("boom")

        for name in ("a", "b"):
            Deadline(loop, record(name)).set(0.05)
        Deadline(loop, boom).set(0.05)
        for name in ("c", "d"):
            Deadline(loop, record(name)).set(0.05)

    got = run(fired_at(set_up, wait=0.2))
    assert set(got) == {"a", "b", "c", "d"}
    assert [str(e) for e in errors] == ["boom"]


def test_deadlines_of_one_loop_share_one_wheel_and_one_timer_per_slot():
    async def main():
        loop = asyncio.get_running_loop()
        wheel = timer_wheel(loop)
        assert timer_wheel(loop) is wheel
        ds = [Deadline(loop, lambda: None) for _ in range(100)]
        for d in ds:
            d.set(1.0)
        occupied = len(wheel.slots)
        for d in ds:
            d.cancel()
        return occupied, sum(len(m) for m in wheel.slots.values())

    occupied, left = run(main())
    assert occupied <= 2  # 100 deadlines filed ~together share a slot (or two at a boundary)
    assert left == 0


# ---------------------------------------------------------------- WriteFlow (rule 10)

class _Answerer(asyncio.Protocol):
    """Answers every received byte with ANSWER bytes, honouring WriteFlow."""

    ANSWER = b"a" * 1000

    def __init__(self, stats: dict) -> None:
        from cfproxy.proxy.flow import ReadGate, WriteFlow

        self.stats = stats
        self.pending = 0
        self._gate_cls, self._flow_cls = ReadGate, WriteFlow

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=64 * 1024)
        self.flow = self._flow_cls(self._gate_cls(transport), self.drain)

    def data_received(self, data):
        self.stats["received"] += len(data)
        self.pending += len(data)
        self.drain()

    def drain(self):
        while self.pending and not self.flow.blocked:
            self.pending -= 1
            self.transport.write(self.ANSWER)
            self.stats["answered"] += 1
            self.stats["max_buffer"] = max(self.stats["max_buffer"],
                                           self.transport.get_write_buffer_size())

    def pause_writing(self):
        self.flow.pause_writing()

    def resume_writing(self):
        self.flow.resume_writing()


def test_write_flow_stops_reading_while_answers_are_unread_and_resumes_after():
    async def main():
        loop = asyncio.get_running_loop()
        stats = {"received": 0, "answered": 0, "max_buffer": 0}
        server = await loop.create_server(lambda: _Answerer(stats), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        total = 200_000  # 200 MB of answers if nothing held the server back
        writer.write(b"x" * total)
        await asyncio.sleep(0.5)
        # the server stopped reading: it buffered at most about one high-water mark of
        # answers, and the requests it did not read stay in the kernel / our buffer
        assert stats["max_buffer"] <= 64 * 1024 + 1000
        assert stats["received"] < total
        answered_while_unread = stats["answered"]
        assert answered_while_unread < total
        # reading the answers lets everything through
        got = 0
        while got < total * 1000:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert chunk
            got += len(chunk)
        assert stats["answered"] == total
        writer.close()
        server.close()
        await server.wait_closed()

    run(main())
