"""Deadlines of the data path, in one place: lazy per-connection timers on a shared wheel.

`Deadline` is a per-connection timer that is cheap to push forward: moving it is a float
write; it is only re-filed when it fires early (re-arming a loop.call_later handle on
every read costs a TimerHandle and two libuv calls). Deadlines live in a per-loop
`TimerWheel` (1/32 s slots, one loop timer per occupied slot), so opening and closing a
connection starts and stops no timer of its own. The proxy's timeouts (--timeout,
--proxy-timeout, --keep-alive-timeout, --header-timeout, --request-timeout,
--upstream-idle-timeout) are all Deadlines.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable


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
