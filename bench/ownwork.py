"""burstq's own CPU per request, without HTTP: a profiling aid for the overhead scenario.

The real scan, dispatch pass, engine, pricing and records run in-process over INPUT; the one
ApiClient is replaced by a stub that encodes the body and decodes a canned answer, as the real
client does, and yields to the loop once. What is left is burstq's own work, measured with
process_time (CPU, so other load on the machine distorts it little) and steady enough to
compare commits: `cd /tmp && PYTHONPATH=DIR:REPO python -m bench.ownwork INPUT` measures
the burstcli/ in DIR (from inside the repository its own burstcli/ would win).

    python -m bench.ownwork INPUT          # prints scan us/line and engine us/request
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from multidict import CIMultiDict, CIMultiDictProxy

from .fastserver import CHAT_ANSWER

HEAD = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
RAW = orjson.dumps(CHAT_ANSWER)


class Stub:
    """ApiClient.call without the socket: the body encoded, the answer decoded, one yield."""

    timeout = None
    base_url = "stub"

    async def call(self, endpoint: str, model: str, body: dict[str, Any]) -> Any:
        from burstcli.live.client import Reply

        orjson.dumps({"model": model, **body})
        await asyncio.sleep(0)
        return Reply(orjson.loads(RAW), HEAD)


async def measure(inp: Path, n: int) -> tuple[float, float]:
    from burstcli.config import LimitSpec
    from burstcli.files.journal import Journal
    from burstcli.files.reader import FileSource, LineParser
    from burstcli.live.endpoints import EndpointSpec
    from burstcli.live.engine import Engine, EngineConfig
    from burstcli.live.feed import chain
    from burstcli.live.router import Breaker, Endpoint, Router, endpoint_limits
    from burstcli.models import Tally
    from burstcli.money.pricing import PriceBook

    loop = asyncio.get_running_loop()
    spec = EndpointSpec(name=None, base_url="http://stub/v1")
    limits = endpoint_limits(LimitSpec(64, True, None, None), clock=loop.time)
    stub: Any = Stub()
    ep = Endpoint(spec, stub, limits, Breaker(3, 15, loop.time, enabled=False))
    router = Router([ep], loop.time)
    out = Path(tempfile.mkdtemp()) / "o.jsonl"
    journal = Journal(out)
    prices = PriceBook(None, provider_api_url="http://127.0.0.1:1/v1", warn=lambda m: None)
    src = FileSource(inp, "gpt-4o-mini", LineParser("gpt-4o-mini"))
    tally = Tally()
    eng = Engine(
        router=router, journal=journal, config=EngineConfig(), price=prices.cost, tally=tally
    )
    gc.freeze()  # as run.py does around the engine
    gc.set_threshold(50_000, 20, 100)
    t0 = time.process_time()
    src.scan(None, lambda x: None, lambda: False)
    t1 = time.process_time()
    items = chain([], src.requests())
    await eng.run(items)
    t2 = time.process_time()
    journal.close()
    if tally.completed != n:
        raise SystemExit(f"{tally.completed} of {n} requests completed")
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def main() -> None:
    inp = Path(sys.argv[1])
    with inp.open("rb") as f:
        n = sum(1 for _ in f)
    scan, engine = uvloop.run(measure(inp, n))
    print(f"scan {scan:.1f} us/line, dispatch + engine + records {engine:.1f} us/request")


if __name__ == "__main__":
    main()
