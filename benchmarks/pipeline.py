"""A client that pipelines requests and never reads: how much memory does the proxy spend?

Owns the `pipeline` scenario's client. One connection writes the same small
request over and over (health check on the public port, an unauthenticated
`GET /api/routes` on the API port, `GET /metrics` on the metrics port) and
never reads a byte of the answers. A proxy that keeps reading queues its
answers in memory without limit; one that stops reading while its write buffer
is full makes the client's sends block instead. The client is bounded in bytes
(100 MB by default) and in time, samples the proxy's RSS (process tree) every
~50 ms while it writes and for a short while after, and reports the peak growth.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable

MB = 1_000_000

REQUESTS = {
    # port kind -> the request pipelined there (what CHP and cfproxy answer by themselves)
    "public": b"GET /_chp_healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "api": b"GET /api/routes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "metrics": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


def pipeline_without_reading(port: int, request: bytes, rss_kib: Callable[[], int], *,
                             max_bytes: int = 100 * MB, seconds: float = 10.0,
                             settle: float = 1.0) -> dict:
    """Write `request` pipelined to 127.0.0.1:port, never reading; return RSS growth and bytes.

    Stops after `max_bytes` written or `seconds`, whichever comes first; then keeps
    sampling RSS for `settle` seconds (the proxy may still be answering what it
    read), and resets the connection.
    """
    base = rss_kib()
    block = request * max(1, 65536 // len(request))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    sent = 0
    peak = base
    t0 = time.monotonic()
    next_sample = t0
    view = memoryview(block)
    off = 0
    try:
        while sent < max_bytes:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            if now >= next_sample:
                peak = max(peak, rss_kib())
                next_sample = now + 0.05
            _, writable, _ = select.select([], [sock], [], 0.05)
            if not writable:
                continue
            try:
                n = sock.send(view[off:])
            except BlockingIOError:
                continue
            except OSError:  # the proxy closed the connection: it refused to queue more
                break
            sent += n
            off = (off + n) % len(block)
        elapsed = time.monotonic() - t0
        end = time.monotonic() + settle
        while time.monotonic() < end:
            peak = max(peak, rss_kib())
            time.sleep(0.05)
    finally:
        # RST instead of FIN: the proxy must not be left writing answers to a closed reader
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    return {"growth_mib": (peak - base) / 1024, "sent_mb": sent / MB,
            "base_mib": base / 1024, "peak_mib": peak / 1024, "write_s": elapsed}
