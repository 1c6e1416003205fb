"""Backpressure and lazy deadlines for the data path (DESIGN.md rule 3).

`ReadGate` is the one place that knows how reading on a transport is paused and resumed.
Reading can be held for several independent reasons at once (the other side's write buffer
is full, a pipelined request waits behind the current one, an upstream connection is still
being opened, this transport's own answers are not being read); each reason is a bit, and
the transport reads only while no bit is set. So one reason ending never resumes a
transport another reason still holds.

`WriteFlow` is the one rule for a protocol that writes answers of its own (health check,
404/503 pages, the API, metrics, redirects; DESIGN.md rule 10): while the transport's write
buffer is above its high-water mark, reading stops and buffered requests wait; below it,
reading resumes and the protocol is told to go on with what it buffered. So a client that
pipelines requests and never reads its answers costs one write buffer, not an unbounded
queue of answers. (uvicorn's flow_control.py is the model.)

`Deadline` is a per-connection timer that is cheap to push forward: moving it is a float
write; it is only re-filed when it fires early. Re-arming a loop.call_later handle on
every read measured ~1.5 µs; this costs ~0.1 µs. Deadlines live in a per-loop
`TimerWheel` (1/32 s slots, one loop timer per occupied slot), so opening and closing a
connection starts and stops no timer of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

# reasons to hold reading (bits)
PEER_BUSY = 1  # the opposite transport's write buffer is above its high-water mark
QUEUED = 2  # client: a pipelined request is buffered behind the one in flight
CONNECTING = 4  # client: the upstream connection is not open yet
IDLE = 8  # upstream: not reading for anyone (never used while pooled)
OWN_WRITES = 16  # this transport's own write buffer is above its high-water mark


class ReadGate:
    """Pause/resume reading on one transport for a set of independent reasons."""

    __slots__ = ("transport", "held")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held = 0

    def hold(self, reason: int) -> None:
        if not self.held:
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass  # closing transport
        self.held |= reason

    def release(self, reason: int) -> None:
        if self.held & reason:
            self.held &= ~reason
            if not self.held:
                try:
                    self.transport.resume_reading()
                except (RuntimeError, AttributeError):
                    pass

    def release_all(self) -> None:
        if self.held:
            self.held = 0
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass


class WriteFlow:
    """Stop reading a connection while its own answers are not being read (rule 10).

    Use: the protocol's `pause_writing` / `resume_writing` call the ones here; before it
    handles the next buffered request it checks `blocked` and, when set, leaves the rest
    buffered; `on_drain()` (given at construction) runs after reading resumed, to go on
    with what is buffered. The transport's `write()` calls `pause_writing` synchronously
    once its buffer passes the high-water mark, so `blocked` is exact right after a write.

        flow = WriteFlow(ReadGate(transport), self.process_buffered)
        def pause_writing(self): self.flow.pause_writing()
        def resume_writing(self): self.flow.resume_writing()
        ... while buffered and not self.flow.blocked: answer the next request
    """

    __slots__ = ("gate", "on_drain")

    def __init__(self, gate: ReadGate, on_drain: Callable[[], None] | None = None) -> None:
        self.gate = gate
        self.on_drain = on_drain

    @property
    def blocked(self) -> bool:
        """True while the write buffer is above its high-water mark."""
        return bool(self.gate.held & OWN_WRITES)

    def pause_writing(self) -> None:
        self.gate.hold(OWN_WRITES)

    def resume_writing(self) -> None:
        if self.gate.held & OWN_WRITES:
            self.gate.release(OWN_WRITES)
            if self.on_drain is not None:
                self.on_drain()


class TimerWheel:
    """Deadlines of one loop, grouped in 1/32 s slots: one loop timer per occupied slot.

    A per-connection loop.call_at costs a TimerHandle and a libuv timer start/stop
    per connection; with a new connection per request that was ~4% of the proxy's
    CPU. Here opening a connection's deadline is a set insertion, and a slot's
    timer is shared by every deadline in it. Deadlines fire up to 1/32 s late.
    """

    __slots__ = ("loop", "slots")

    RESOLUTION = 32  # slots per second

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[Deadline]] = {}

    def add(self, deadline: Deadline, when: float) -> None:
        slot = int(when * self.RESOLUTION) + 1  # fires at slot / RESOLUTION >= when
        members = self.slots.get(slot)
        if members is None:
            members = self.slots[slot] = set()
            self.loop.call_at(slot / self.RESOLUTION, self._fire, slot)
        members.add(deadline)
        deadline.slot = slot

    def remove(self, deadline: Deadline) -> None:
        members = self.slots.get(deadline.slot)
        if members is not None:
            members.discard(deadline)
        deadline.slot = 0

    def _fire(self, slot: int) -> None:
        members = self.slots.pop(slot, None)
        if not members:
            return
        now = self.loop.time()
        for deadline in members:
            deadline.slot = 0
            expires = deadline.expires
            if not expires:
                continue  # cleared since it was filed
            if expires > now + 0.001:  # (loop.time() may be a millisecond behind the slot)
                self.add(deadline, expires)  # pushed forward meanwhile: file it again
                continue
            deadline.expires = 0.0
            try:
                deadline.callback()
            except Exception as e:  # noqa: BLE001 - one bad callback must not stop the others
                self.loop.call_exception_handler(
                    {"message": "deadline callback failed", "exception": e})


_wheels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def timer_wheel(loop: asyncio.AbstractEventLoop) -> TimerWheel:
    """The TimerWheel of `loop` (made on first use)."""
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = TimerWheel(loop)
    return wheel


class Deadline:
    """Calls `callback()` once `expires` (loop.time()) has passed.

    `expires = 0` disarms. `set(seconds)` moves it: a float write, unless it moved
    earlier than the slot it is filed in (then it is re-filed); a deadline found
    pushed forward when its slot fires is filed again for the remainder.
    """

    __slots__ = ("loop", "wheel", "callback", "expires", "slot")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None],
                 wheel: TimerWheel | None = None) -> None:
        self.loop = loop
        self.wheel = wheel if wheel is not None else timer_wheel(loop)
        self.callback = callback
        self.expires = 0.0
        self.slot = 0  # the wheel slot it is filed in; 0 = none

    def set(self, seconds: float) -> None:
        self.expires = when = self.loop.time() + seconds
        slot = self.slot
        if not slot:
            self.wheel.add(self, when)
        elif int(when * TimerWheel.RESOLUTION) + 1 < slot:  # moved before its slot
            self.wheel.remove(self)
            self.wheel.add(self, when)

    def clear(self) -> None:
        self.expires = 0.0

    def cancel(self) -> None:
        self.expires = 0.0
        if self.slot:
            self.wheel.remove(self)
