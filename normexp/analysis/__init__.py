"""Reading runs without torch: the run folder's format, sweeps, results and the writeup's numbers, claims,
plots and a sweep's status. Nothing here imports torch (tests/test_layout.py checks it)."""
