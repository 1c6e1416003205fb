"""What the REST API asks of the workers, in one place: two awaits, no-ops in a single process.

    await after_write(app)    before answering a POST/DELETE: every live worker routes by the
                              table this write made (read-your-writes; feed.py)
    await before_read(app)    before answering a GET: last_activity includes what the workers
                              saw up to now (primary.Supervisor.gather_activity)

Both are one attribute read when `--workers` is 1. A store sync layer that applies writes for
the API may call `after_write` itself instead.
"""

from __future__ import annotations

from typing import Any


async def after_write(app: Any) -> None:
    supervisor = getattr(app, "workers", None)
    if supervisor is not None:
        await supervisor.feed.applied_everywhere()


async def before_read(app: Any) -> None:
    supervisor = getattr(app, "workers", None)
    if supervisor is not None:
        await supervisor.gather_activity()
