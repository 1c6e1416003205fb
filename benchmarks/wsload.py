"""WebSocket load client: echo round trips and bulk throughput, kept cheap.

Owns WebSocket load generation for the benchmarks. To stay far below the cost of
the proxy under test it never parses frames on the hot path: every frame it
sends is pre-built (masked with the all-zero key, so the bytes are the payload),
and because the echo backend answers each frame with a frame of known size, the
client only counts received bytes. The direct run (no proxy) shows its ceiling.

Modes (one process, one uvloop loop, run pinned to the load core):
  echo: C connections, one message in flight each; round trips/s, p50, p99.
  bulk: C connections, a window of large frames in flight each; echoed MB/s.

Run: python -m benchmarks.wsload --port P [--path /ws] --mode echo --conns 50 --duration 5
Prints one JSON line: {"ops": .., "ops_per_s": .., "mb_per_s": .., "p50_ms": .., "p99_ms": .., ...}
Also used in-process by the runner to hold many open WebSockets (open_websockets).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time

from benchmarks.backend import frame_header, raise_nofile

perf = time.perf_counter


def handshake(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n").encode() + \
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame with the all-zero mask key (payload bytes unchanged)."""
    return frame_header(opcode, len(payload), mask=True) + b"\0\0\0\0" + payload


def echoed_size(payload_len: int) -> int:
    return len(frame_header(0x2, payload_len)) + payload_len


class _Stats:
    __slots__ = ("ops", "lat", "measuring", "running", "errors", "upgraded")

    def __init__(self) -> None:
        self.ops = 0
        self.lat: list[float] = []
        self.measuring = False
        self.running = True
        self.errors = 0
        self.upgraded = 0


class WSLoadConn(asyncio.Protocol):
    """One WebSocket; after the 101, keeps `window` frames in flight and counts echoes."""

    def __init__(self, stats: _Stats, hs: bytes, frame: bytes, echo_len: int, window: int,
                 ready: asyncio.Future) -> None:
        self.stats = stats
        self.hs = hs
        self.frame = frame
        self.echo_len = echo_len
        self.window = window
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.upgraded = False
        self.pending = 0  # received bytes not yet making up a whole echoed frame
        self.sent_at: list[float] = []
        self.paused = False
        self.owed = 0  # frames not sent while the transport was paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hs)  # type: ignore[attr-defined]

    def start(self) -> None:
        now = perf()
        self.sent_at = [now] * self.window
        self.transport.write(self.frame * self.window)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.stats.errors += 1
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(self.head[:80].decode("latin-1")))
                self.transport.close()
                return
            self.upgraded = True
            self.stats.upgraded += 1
            data = self.head[end + 4:]
            self.head = b""
            if not self.ready.done():
                self.ready.set_result(self)
            if not data:
                return
        st = self.stats
        self.pending += len(data)
        n = self.pending // self.echo_len
        if not n:
            return
        self.pending -= n * self.echo_len
        if st.measuring:
            st.ops += n
            now = perf()
            sa = self.sent_at
            lat = st.lat
            for i in range(n):
                lat.append(now - sa[i])
            del sa[:n]
        else:
            del self.sent_at[:n]
        if not st.running:
            return
        if self.paused:
            self.owed += n
            return
        now = perf()
        self.sent_at.extend([now] * n)
        self.transport.write(self.frame * n if n > 1 else self.frame)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.owed and self.stats.running:
            n, self.owed = self.owed, 0
            self.sent_at.extend([perf()] * n)
            self.transport.write(self.frame * n)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stats.running and self.upgraded:
            self.stats.errors += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before 101: {exc}"))


async def _connect_all(factory, host: str, port: int, conns: int, batch: int = 200) -> list:
    loop = asyncio.get_running_loop()
    out = []
    for start in range(0, conns, batch):
        futs = []
        for _ in range(min(batch, conns - start)):
            ready = loop.create_future()
            futs.append(ready)
            await loop.create_connection(lambda r=ready: factory(r), host, port)
        out.extend(await asyncio.wait_for(asyncio.gather(*futs), 30))
    return out


async def run_load(port: int, *, host: str = "127.0.0.1", path: str = "/ws", mode: str = "echo",
                   conns: int = 50, duration: float = 5.0, warmup: float = 0.5,
                   size: int | None = None, window: int | None = None) -> dict:
    """Run one measurement; return ops, ops/s, MB/s and latency percentiles (ms)."""
    if size is None:
        size = 32 if mode == "echo" else 64 * 1024
    if window is None:
        window = 1 if mode == "echo" else 16
    payload = b"x" * size
    frame = client_frame(payload)
    echo_len = echoed_size(size)
    stats = _Stats()
    hs = handshake(host, port, path)
    protos = await _connect_all(
        lambda r: WSLoadConn(stats, hs, frame, echo_len, window, r), host, port, conns)
    for p in protos:
        p.start()
    await asyncio.sleep(warmup)
    stats.lat.clear()
    stats.ops = 0
    stats.measuring = True
    t0 = perf()
    await asyncio.sleep(duration)
    stats.measuring = False
    elapsed = perf() - t0
    stats.running = False
    ops = stats.ops
    for p in protos:
        p.transport.abort()
    lat = sorted(stats.lat)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0

    return {"ops": ops, "ops_per_s": ops / elapsed, "mb_per_s": ops * size / elapsed / 1e6,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": stats.errors,
            "conns": conns, "size": size, "elapsed": elapsed}


class _Holder(asyncio.Protocol):
    def __init__(self, hs: bytes, ready: asyncio.Future) -> None:
        self.hs = hs
        self.ready = ready
        self.head = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hs)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            if self.head.startswith(b"HTTP/1.1 101"):
                self.ready.set_result(self)
            else:
                self.ready.set_exception(RuntimeError(self.head[:80].decode("latin-1")))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before 101: {exc}"))


async def open_websockets(port: int, count: int, *, host: str = "127.0.0.1",
                          path: str = "/ws") -> list:
    """Open `count` WebSockets (handshake done) and return their protocols (abort() to close)."""
    hs = handshake(host, port, path)
    return await _connect_all(lambda r: _Holder(hs, r), host, port, count)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="WebSocket echo/bulk load client")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--mode", choices=("echo", "bulk"), default="echo")
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--size", type=int, default=None, help="payload bytes per frame")
    p.add_argument("--window", type=int, default=None, help="frames in flight per connection")
    a = p.parse_args(argv)
    raise_nofile()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        res = asyncio.run(run_load(a.port, host=a.host, path=a.path, mode=a.mode, conns=a.conns,
                                   duration=a.duration, warmup=a.warmup, size=a.size,
                                   window=a.window))
    except Exception as e:  # reported to the runner as an error cell
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
