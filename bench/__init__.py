"""burstq's benchmark suite (issue 7): `python -m bench` from the repository root.

Each scenario starts real processes (the mock server, `burstq run`, baseline clients) on
loopback and reports its figures as ratios against a baseline measured in the same run, so the
numbers mean something on any machine. See docs/benchmarks.md for the figures and the targets.
"""
