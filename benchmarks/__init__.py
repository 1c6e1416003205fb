"""cfproxy benchmarks: `python -m benchmarks` runs cfproxy beside CHP, nginx and direct.

See benchmarks/README.md for how to run and read it.
"""
