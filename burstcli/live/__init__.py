"""The online pipeline: the engine (dispatch, retries, fallbacks, records), what feeds it
(feed.py) and the outcomes it builds from failures (outcomes.py); the limits (pacers,
concurrency window, 429 pause), the adaptive window for servers that publish no limits
(adaptive.py), the reachability probe (probe.py), the router and the HTTP client.

May import: config, files, money, models, errors. Never batch/, observe/ or mock/.
"""
