"""Backpressure for the data path and the proxy's own answers (DESIGN.md rules 3, 10).

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

Deadlines (Deadline, TimerWheel) live in cfproxy.proxy.deadline; re-exported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cfproxy.proxy.deadline import Deadline, TimerWheel, timer_wheel

__all__ = ["ReadGate", "WriteFlow", "Deadline", "TimerWheel", "timer_wheel", "PEER_BUSY",
           "QUEUED", "CONNECTING", "IDLE", "OWN_WRITES"]

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
