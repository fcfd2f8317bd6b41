"""Helpers shared by the tests, the benchmarks and the tools (not installed with the package).

* :mod:`infd_devkit.live` -- the app served for real on a free localhost port (tests, bench).
* :mod:`infd_devkit.authors_fixtures` -- the golden fixtures of the authors' code: their specs,
  random weights and summaries (``tests/test_authors_import.py``, ``tools/make_authors_fixtures.py``).
"""
