"""`python -m cfproxy` — same as the `configurable-http-proxy` command."""

from cfproxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
