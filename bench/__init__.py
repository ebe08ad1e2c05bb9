"""Benchmarks (`make bench`), not collected by `make test`.

Every figure is measured against a baseline taken in the same run on the same database, so the
ratios hold on a noisy machine. `python -m bench --help` lists the options; the results land in
`bench/results.json` (git-ignored) and in a table on stdout.
"""
