"""Provider Batch API mode (`--via batch`): half price, no rate limit, up to 24 h.

jobs.py sets a run up and is the entry point; plan.py packs requests into shards and writes
their files; driver.py drives each shard through upload, create, poll and collect under a
write-ahead state file (state.py); lines.py knows the Batch API's file lines; provider.py
wraps the control-plane calls (the openai SDK).
May import: config, files, money, models, errors. Never live/ or mock/.
"""
