"""The benchmark: ``python -m tests.bench [--rows 1000000] [--eligible-pct 3] [--url URL]``.

It builds job tables in schemas of its own (``reconciler_bench`` and
``reconciler_bench_small``, dropped at the end) and reports, per transition
task: the idle run time on a small and on a large table (an index-served
selection does not grow with the table), the rows per second of a full
batched run through ``run_task``, the same rows moved by one unbatched
statement as the baseline, and the longest single transaction of the batched
run. A benchmark, not a test: nothing asserts on the figures.
"""
