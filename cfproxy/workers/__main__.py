"""`python -m cfproxy.workers <channel fd> <primary pid>`: a worker process (started by the primary)."""

from cfproxy.workers.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
