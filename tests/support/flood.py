"""A client that pipelines requests and never reads the answers, and the proxy's memory under it.

    result = flood(port, request_bytes, total=100 << 20, seconds=4.0)
    result.sent          bytes of requests the proxy accepted (the kernel took them)
    result.stalled       True when sending had stopped making progress (the proxy stopped reading)
    rss_kib(pid), peak_rss_kib(pid)   VmRSS / VmHWM of a process, from /proc

The flood sends `request_bytes` back to back from a non-blocking socket until `total`
bytes went out or `seconds` passed; it is `stalled` when nothing could be sent in its
last `stall_seconds` (the proxy holds reading, and the kernel buffers on both sides are
full). It never reads,
so everything the proxy answers piles up: in the kernel (bounded by socket buffers,
not counted in RSS) and, unless the proxy stops reading while its write buffer is
full, in the proxy's own memory.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from dataclasses import dataclass


@dataclass
class FloodResult:
    sent: int
    seconds: float
    stalled: bool
    sock: socket.socket  # still open: the caller decides when the flooder leaves
    retry: bytes = b""  # TLS: the write that would block, to be retried as it was (OpenSSL)


def flood(port: int, request: bytes, total: int = 100 << 20, seconds: float = 4.0,
          stall_seconds: float = 0.75, host: str = "127.0.0.1",
          tls: ssl.SSLContext | None = None) -> FloodResult:
    """Pipeline copies of `request` to host:port without reading, for `seconds` (or until
    `total` bytes went out); `stalled` = nothing could be sent in the last `stall_seconds`.
    With `tls`, over TLS (the handshake is done before the flood)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # small buffers on our side: the proxy's answers fill them sooner, so the test stalls
    # the proxy with less work (the proxy's own socket buffers are its kernel's business)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect((host, port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=host)
    sock.setblocking(False)
    batch = request * max(1, (256 * 1024) // len(request))
    view = memoryview(batch)
    offset = 0
    sent = 0
    retry = b""
    start = last_progress = time.monotonic()
    while sent < total and time.monotonic() - start < seconds:
        _, writable, _ = select.select([], [sock], [], 0.05)
        if not writable:
            continue
        try:
            n = sock.send(view[offset:])
            retry = b""
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            retry = bytes(view[offset:])
            continue
        except OSError:  # the proxy closed the connection
            break
        if n:
            sent += n
            offset = (offset + n) % len(batch)
            last_progress = time.monotonic()
    end = time.monotonic()
    return FloodResult(sent, end - start, end - last_progress >= stall_seconds, sock, retry)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` now, KiB."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """The highest resident set size `pid` has had, KiB."""
    return _status_kib(pid, "VmHWM")
