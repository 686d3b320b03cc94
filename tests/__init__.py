"""memlab's tests; ``tests.helpers``, ``tests.browser`` and ``tests.procs`` are shared with benchmarks/."""
