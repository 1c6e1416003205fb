"""cfproxy: a fast, drop-in replacement for configurable-http-proxy."""

__version__ = "0.1.0"
# The version CHP reports and that `--version` prints, so tools that parse it keep working.
CHP_COMPAT_VERSION = "5.3.0"
