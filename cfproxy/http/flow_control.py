"""Backpressure for protocols that write answers of their own (DESIGN.md rule 10).

`WriteFlow` is the one rule for the API, metrics and redirect listeners: while the
transport's write buffer is above its high-water mark, reading stops and buffered requests
wait; below it, reading resumes and the protocol is told to go on with what it buffered.
So a client that pipelines requests and never reads its answers costs one write buffer, not
an unbounded queue of answers. (uvicorn's flow_control.py is the model.)

Interim home: the same class is being added to cfproxy/proxy/flow.py beside `ReadGate` for
the public port; once it lands there this module goes and its callers import that one.
"""

from __future__ import annotations

from collections.abc import Callable

from cfproxy.proxy.flow import ReadGate

OWN_WRITES = 16  # this transport's own write buffer is above its high-water mark


class WriteFlow:
    """Stop reading a connection while its own answers are not being read.

    The protocol's `pause_writing` / `resume_writing` call the ones here; before it handles
    the next buffered request it checks `blocked` and, when set, leaves the rest buffered;
    `on_drain()` runs after reading resumed, to go on with what is buffered. The transport's
    `write()` calls `pause_writing` synchronously once its buffer passes the high-water
    mark, so `blocked` is exact right after a write.
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
