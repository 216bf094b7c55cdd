"""Side-by-side performance runs against a throwaway local stack (see benchmarks/README.md).

Run with ``.venv/bin/python -m benchmarks.run``; one module per benchmark (``b1_refresh``,
``b4_prometheus``, ...), registered in ``benchmarks.run.BENCHMARKS``.
"""
