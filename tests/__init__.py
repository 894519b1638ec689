"""citeloop's test suite (a package, so that `tests.*` resolves here before any stray top-level `tests` package an
installed distribution ships, as ppi-python does)."""
