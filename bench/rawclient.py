"""Baseline clients for the overhead scenario: a minimal raw aiohttp client and the openai SDK.

The raw client is what "no SDK, no files" means in issue 7: one aiohttp session with a
connection pool as wide as the concurrency, C workers pulling request numbers from a shared
counter, an orjson body per request, orjson parsing of each answer down to
choices[0].message.content, on uvloop (which burstq also uses). It is the floor any client
pays for HTTP on this machine, so burstq's end-to-end rate is reported as a fraction of it.

    python -m bench.rawclient URL -n 20000 -c 128 [--sdk]

prints one JSON line: {"client", "requests", "ok", "errors", "elapsed", "rps"}; elapsed runs
from the first request to the last answer (interpreter start-up is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson


async def raw_aiohttp(base_url: str, n: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    ok = errors = 0
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal ok, errors
            for i in counter:
                body = orjson.dumps(
                    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"say {i}"}]}
                )
                try:
                    async with session.post(url, data=body) as resp:
                        raw = await resp.read()
                        status = resp.status
                    if status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"]:
                        ok += 1
                    else:
                        errors += 1
                except (aiohttp.ClientError, OSError, ValueError, KeyError):
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "client": "raw-aiohttp",
        "requests": n,
        "ok": ok,
        "errors": errors,
        "elapsed": elapsed,
        "rps": n / elapsed,
    }


async def openai_sdk(base_url: str, n: int, concurrency: int) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    ok = errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal ok, errors
        for i in counter:
            try:
                r = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"say {i}"}]
                )
                if r.choices[0].message.content:
                    ok += 1
                else:
                    errors += 1
            except openai.OpenAIError:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return {
        "client": f"openai-sdk {openai.__version__}",
        "requests": n,
        "ok": ok,
        "errors": errors,
        "elapsed": elapsed,
        "rps": n / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="baseline HTTP clients for the burstq bench")
    ap.add_argument("base_url")
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("-c", "--concurrency", type=int, default=128)
    ap.add_argument("--sdk", action="store_true", help="the openai SDK's AsyncOpenAI instead")
    args = ap.parse_args()
    fn = openai_sdk if args.sdk else raw_aiohttp
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        result = runner.run(fn(args.base_url, args.n, args.concurrency))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
