"""The one logger, in CHP's format: `<ISO-8601 UTC ms>Z [ConfigProxy] <level>: <message>`.

All levels go to stdout (JupyterHub and CHP's own tests read readiness lines
from there). The level word is ANSI-coloured like CHP's only when stdout is a
TTY or FORCE_COLOR is set (quirk Q19: CHP colours always). Levels are CHP's
winston names; `warn` maps to logging.WARNING.

Hot-path code must guard debug lines with `if DEBUG_ENABLED[0]:` style checks
(see `debug_enabled()`), so a disabled access log costs one attribute read.
"""

from __future__ import annotations

import logging
import os
import sys
import time

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

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        level = _NAMES.get(record.levelno, record.levelname.lower())
        if self.colour:
            level = f"{_COLOURS.get(level, '')}{level}\x1b[39m"
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"{stamp} [ConfigProxy] {level}: {msg}"


def setup_logging(level: str = "info") -> None:
    """Send the ConfigProxy logger to stdout at `level` (a CHP level name)."""
    colour = bool(os.environ.get("FORCE_COLOR")) or (
        sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ChpFormatter(colour))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(LEVELS[level])


def debug_enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)
