"""Showing a run to people: rich progress on a TTY, plain status lines otherwise.

Everything here goes to stderr; stdout is data. The reporter polls the engine's `Tally` and the
limits' snapshot a few times a second, so the hot path never formats anything.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import IO

from ..live.limits import LimitsSnapshot
from ..live.router import EndpointState
from ..models import Tally

Snapshot = Callable[[], LimitsSnapshot]
States = Callable[[], list[EndpointState]]


def endpoints_line(states: list[EndpointState]) -> str:
    """Each endpoint's state in a few characters: `a ok 3/50 rpm≤600 | b open 12s`."""
    parts = []
    for st in states:
        if st.state == "retired":
            parts.append(f"{st.name} retired")
            continue
        text = f"{st.name} " + {"closed": "ok", "probing": "probing"}.get(
            st.state, f"open {st.open_for:.0f}s"
        )
        text += f" {st.in_flight}/{st.concurrency}"
        if st.rpm_ceiling:
            text += f" rpm≤{st.rpm_ceiling:,.0f}"
        if st.rate_limited:
            text += f" {st.rate_limited}x429"
        parts.append(text)
    return " | ".join(parts)


LENGTH_WARN_SHARE = 0.1  # warn when this share of answers was cut at max_tokens


def _money(x: float) -> str:
    if x < 0.01:
        return f"${x:.6f}"
    return f"${x:,.4f}" if x < 100 else f"${x:,.2f}"


def _cost(tally: Tally) -> str:
    """Cost so far; "unpriced" while nothing answered has a known price (never "$0.000000")."""
    if tally.cost_usd == 0 and tally.unpriced:
        return "unpriced"
    text = _money(tally.cost_usd)
    return text + (f" (+{tally.unpriced} unpriced)" if tally.unpriced else "")


def length_warning(tally: Tally) -> str | None:
    """A warning when many answers stopped at max_tokens (finish_reason "length")."""
    cut = tally.cut_at_length
    if cut and tally.completed and cut / tally.completed >= LENGTH_WARN_SHARE:
        return f"{cut} answers cut at max_tokens"
    return None


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def status_line(tally: Tally, snap: LimitsSnapshot, elapsed: float) -> str:
    done = tally.finished
    total = f"/{tally.total - tally.skipped}" if tally.total is not None else ""
    rate = _rate(done, elapsed)
    parts = [
        f"burstq: {done}{total} done",
        f"{tally.failed} failed",
        f"{rate * 60:,.0f} req/min",
        f"{tally.in_flight} in flight",
        f"{tally.prompt_tokens + tally.completion_tokens:,} tokens",
        _cost(tally),
    ]
    if tally.total is not None and rate > 0:
        left = tally.total - tally.skipped - done
        parts.append(f"ETA {_duration(left / rate)}")
    limits = []
    if snap.rpm:
        limits.append(f"rpm {snap.rpm:,.0f}")
    if snap.tpm:
        limits.append(f"tpm {snap.tpm:,.0f}")
    limits.append(f"conc {snap.concurrency}" + (" adaptive" if snap.adaptive else ""))
    parts.append(" ".join(limits))
    if tally.rate_limited:
        parts.append(f"{tally.rate_limited} 429s")
    if snap.limiter:
        parts.append(f"limiter {snap.limiter}")
    if (pause := pause_text(snap)) is not None:
        parts.append(pause)
    if warning := length_warning(tally):
        parts.append(f"warning: {warning}")
    return " | ".join(parts)


def pause_text(snap: LimitsSnapshot) -> str | None:
    """'paused: 429 retry-after, until 14:03:27 (1m40s)' while a pause is on, else None."""
    if snap.paused_for < 0.5:
        return None
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + snap.paused_for))
    return f"paused: {snap.pause_reason or 'waiting'}, until {until} ({_duration(snap.paused_for)})"


def _duration(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Reporter:
    """Runs beside the engine; `mode` is 'rich', 'plain' or 'quiet'."""

    def __init__(
        self,
        tally: Tally,
        snapshot: Snapshot,
        *,
        mode: str,
        interval: float | None = None,
        stream: IO[str] | None = None,
        endpoints: States | None = None,
    ) -> None:
        self.tally = tally
        self.snapshot = snapshot
        self.endpoints = endpoints
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval if interval is not None else (0.25 if mode == "rich" else 5.0)
        self._task: asyncio.Task[None] | None = None
        self._progress: object | None = None
        self._started = time.monotonic()

    def start(self) -> None:
        if self.mode == "quiet":
            return
        self._started = time.monotonic()
        if self.mode == "rich":
            self._start_rich()
        self._task = asyncio.create_task(self._loop())

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]burstq"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(file=self.stream),
            transient=False,
        )
        progress.start()
        self._task_id = progress.add_task("run", total=None, info="")
        self._progress = progress

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def tick(self) -> None:
        elapsed = time.monotonic() - self._started
        snap = self.snapshot()
        if self.mode == "rich" and self._progress is not None:
            from rich.progress import Progress

            assert isinstance(self._progress, Progress)
            t = self.tally
            total = t.total - t.skipped if t.total is not None else None
            info = (
                f"{_rate(t.finished, elapsed) * 60:,.0f}/min "
                f"{t.prompt_tokens + t.completion_tokens:,}tok {_cost(t)} "
                f"[red]{t.failed} failed[/] {t.in_flight} busy"
            )
            if snap.rpm:
                info += f" rpm≤{snap.rpm:,.0f}"
            if snap.tpm:
                info += f" tpm≤{snap.tpm:,.0f}"
            if t.rate_limited:
                info += f" [yellow]429s {t.rate_limited}[/]"
            if snap.limiter and snap.limiter != "shared":
                info += f" [red]limiter {snap.limiter}[/]"
            if (pause := pause_text(snap)) is not None:
                info += f" [yellow]{pause}[/]"
            if self.endpoints is not None:
                info += " · " + endpoints_line(self.endpoints())
            if warning := length_warning(t):
                info += f" [yellow]{warning}[/]"
            self._progress.update(self._task_id, completed=t.finished, total=total, info=info)
        elif self.mode == "plain":
            line = status_line(self.tally, snap, elapsed)
            if self.endpoints is not None:
                line += " | endpoints: " + endpoints_line(self.endpoints())
            print(line, file=self.stream, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._progress is not None:
            self.tick()
            from rich.progress import Progress

            assert isinstance(self._progress, Progress)
            self._progress.stop()

    def summary(self, elapsed: float) -> str:
        t = self.tally
        parts = [f"{t.completed} completed", f"{t.failed} failed"]
        if t.skipped:
            parts.append(f"{t.skipped} already done")
        if t.cached:
            parts.append(f"{t.cached} from the cache")
        parts += [
            f"{t.attempts} attempts ({t.retries} retries, {t.rate_limited} rate-limited)",
            f"{t.prompt_tokens:,} prompt + {t.completion_tokens:,} completion tokens",
            f"cost {_cost(t)}",
            f"{elapsed:.1f}s",
            f"{_rate(t.finished, elapsed) * 60:,.0f} req/min",
        ]
        if t.unanswered:
            parts.append(f"{t.unanswered} attempts possibly billed without an answer")
        if t.cut_at_length:
            parts.append(f"{t.cut_at_length} answers cut at max_tokens (finish_reason length)")
        return "burstq: " + ", ".join(parts)
