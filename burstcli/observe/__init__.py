"""Seeing a run: live progress and status lines, Prometheus metrics, `stats` and its views.

May import: files (to read outputs), live.limits (the snapshot it shows), models, errors.
"""
