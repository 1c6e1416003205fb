"""What the REST API asks of the workers: one await before a GET, a no-op in a single process.

    await before_read(app)    before answering a GET: last_activity includes what the workers
                              saw up to now (primary.Supervisor.gather_activity)

Writes need nothing here: the primary's Supervisor is a StoreSync listener, and StoreSync
answers an API write only after its listeners' awaitables (the feed's barrier) completed.
"""

from __future__ import annotations

from typing import Any


async def before_read(app: Any) -> None:
    supervisor = getattr(app, "workers", None)
    if supervisor is not None:
        await supervisor.gather_activity()
