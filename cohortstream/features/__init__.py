"""Analysis-ready features per subject (issue 18, HAIM-style): the spec, the pure
computation, the columns' data dictionary and the matrix formats.

Pure and I/O-free except :mod:`cohortstream.features.store` (reads the ``features``
collection). The stream side (fold events into inputs, debounce, write documents) lives
in ``consumers/features``; docs: ``docs/features.md``.
"""
