"""The online pipeline: the engine (dispatch, retries, fallbacks, records), the limits
(pacers, concurrency window, 429 pause) and the HTTP client.

May import: config, files, money, models, errors. Never batch/, observe/ or mock/.
"""
