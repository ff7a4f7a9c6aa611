"""Opening the window on proof: a first request that is slow or times out must not hold a run
at one request in flight for minutes (issue 13).

The first request goes alone (a wrong key costs one call). If it has not answered after a few
seconds, or as soon as it times out, a models-list GET (cheap, and served by OpenAI, vLLM,
llama.cpp, Ollama and most proxies) tells whether the endpoint is up and takes the key; any
status but 401/403 opens the window (limits.on_reachable). Nothing answering leaves it shut: the
engine's own rules (retries, a few silent timeouts stop the run) then apply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .client import ApiClient
from .limits import Limits


async def open_when_reachable(
    client: ApiClient,
    limits: Limits,
    *,
    after: float,
    now: asyncio.Event,
    stopped: Callable[[], bool],
    tries: int = 4,
) -> None:
    """Probe after `after` seconds (or when `now` is set), backing off, until the window is
    open, the run stops, the key is refused or `tries` probes found nothing."""
    delay = after
    for _ in range(tries):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(now.wait(), delay)
        now.clear()
        if limits.opened or stopped():
            return
        status = await client.probe()
        if status in (401, 403):
            return  # the key is refused: the first request will say so
        if status is not None:
            limits.on_reachable()
            return
        delay *= 2
