"""A headless Chromium driven over the DevTools protocol with aiohttp (already a dependency).

`inspect_page(url)` opens a page in a fresh profile and returns what a person would see and
what the console said: every console error and uncaught exception, every log entry of level
error (a blocked or failed load lands there), every URL the page requested, the bounding box
of each `figure.chart`, and a full-page PNG screenshot. No playwright, no browser download:
the browser is the system's (Debian's `chromium` package, installed by .ci/run).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# What each chart looks like on the page: its id, its box and the rendered SVG's box.
BOXES_JS = """JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => {
  const svg = f.querySelector('svg'); const r = f.getBoundingClientRect();
  const s = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: f.id, width: r.width, height: r.height, svg_width: s.width,
          svg_height: s.height, marks: svg ? svg.querySelectorAll('path, rect').length : 0};
}))"""


def find_chromium() -> str | None:
    override = os.environ.get("BURSTQ_TEST_CHROMIUM")
    if override:
        return override
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(slots=True)
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    screenshot: Path | None = None


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                await self.events.put(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result


def _note(event: dict[str, Any], report: PageReport) -> bool:
    """Record what an event says; True when the page finished loading."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        args = params.get("args", [])
        report.console_errors.append(
            "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in args)
        )
    elif method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        report.console_errors.append(f"exception: {details.get('text')} {details}")
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        report.console_errors.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
    elif method == "Network.requestWillBeSent":
        report.requests.append(params.get("request", {}).get("url", ""))
    return method == "Page.loadEventFired"


async def inspect_page(
    url: str, screenshot: Path, *, chromium: str, width: int = 1100, height: int = 900
) -> PageReport:
    report = PageReport()
    profile = tempfile.mkdtemp(prefix="burstq-chromium-")
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",  # root in CI containers: the sandbox refuses to start as root
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError("chromium exited before it listened for DevTools")
            m = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        # Keep draining stderr so chromium never blocks on a full pipe.
        drain = asyncio.create_task(_drain(proc.stderr))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                s = _Session(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await s.call(f"{domain}.enable")
                await s.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                await s.call("Page.navigate", url=url)
                while not _note(await asyncio.wait_for(s.events.get(), 30), report):
                    pass
                # Events that raced the load event (late console errors) still count.
                await asyncio.sleep(0.3)
                while not s.events.empty():
                    _note(s.events.get_nowait(), report)
                boxes = await s.call("Runtime.evaluate", expression=BOXES_JS, returnByValue=True)

                report.charts = json.loads(boxes["result"]["value"])
                title = await s.call(
                    "Runtime.evaluate", expression="document.title", returnByValue=True
                )
                report.title = title["result"]["value"]
                metrics = await s.call("Page.getLayoutMetrics")
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                shot = await s.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=True,
                    clip={
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": size["height"],
                        "scale": 1,
                    },
                )
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                report.screenshot = screenshot
                with contextlib.suppress(Exception):
                    await s.call("Browser.close")
                s.reader.cancel()
        drain.cancel()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return report


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def main() -> None:
    """`python -m tests.browser PAGE.html SHOT.png [WIDTH]`: a full-page screenshot, and
    exit 1 if the page logged an error (docs/report-screenshot.sh uses it)."""
    import sys

    page, shot = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    width = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    seen = asyncio.run(inspect_page(page.as_uri(), shot, chromium=chromium, width=width))
    print(f"{shot}: {len(seen.charts)} charts, {shot.stat().st_size / 1024:,.0f} KB")
    for e in seen.console_errors:
        print(e, file=sys.stderr)
    sys.exit(1 if seen.console_errors else 0)


if __name__ == "__main__":
    main()
