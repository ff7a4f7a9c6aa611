"""Money: model prices, the cost of an answer, the --max-cost budget and the estimate.

May import: files (to read request files for an estimate), models, errors.
"""
