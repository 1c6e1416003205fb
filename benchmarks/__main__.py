"""`python -m benchmarks` (the comparison) and `python -m benchmarks soak` — see benchmarks/README.md."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["soak"]:
        from benchmarks.soak.run import main as soak_main

        raise SystemExit(soak_main(sys.argv[2:]))
    from benchmarks.runner import main

    raise SystemExit(main())
