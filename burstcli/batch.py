"""Batch API mode: hand a request file to the provider's own Batch API, bring back records.

`burstq run INPUT -o OUTPUT --via batch` reads INPUT like a direct run (invalid lines become
failed records at once), groups the requests by (endpoint, model) because a batch file may hold
one model only, packs them into shards (at most --batch-size, 50,000 requests and 200 MB a
file, and fewer when the provider's enqueued-token limit pushes back), uploads each shard with
purpose "batch", creates a batch, polls it with backoff, downloads the output and error files
and writes one record per request through the Journal, in design.md's shape or, with
`--output-format openai-batch`, in the Batch API's own output shape.

Crash safety is a write-ahead protocol on OUTPUT.batches.json (atomic replace):

    shard formed ─save─> upload ─save file_id─> save "creating" ─> create ─save batch_id─> poll
    collect: records to OUTPUT first, then save (shard done, retries carried)

so a kill at any instant leaves either nothing at the provider that the state does not know
about, or a batch whose input file the state knows: on reattach a shard caught "creating" first
looks for a batch with that input_file_id before it creates one. Records go out before the state
says a shard is done, so a kill mid-collection only means collecting again, skipping the lines
OUTPUT already holds. Expired and failed lines are resubmitted in a new round, only those, until
they complete or --max-retries rounds more are spent.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson

from .batch_provider import Provider, ProviderError, classify_exception, make_client
from .batch_state import (
    BATCH_STATE_SUFFIX,
    BatchState,
    Pending,
    Shard,
    batch_state_path,
    load_state,
    public_url,
)
from .client import extract_output
from .engine import Budget, RunOutcome, invalid_result, now_iso, worst_case
from .errors import FatalProviderError, ResumeMismatch, UsageError
from .formats import resume_openai_batch, to_openai_batch_line
from .journal import Journal, open_for_resume
from .models import ENDPOINT_PATHS, InvalidLine, Request, Result, Tally
from .reader import Done, FileSource, file_digest, parse_line

if TYPE_CHECKING:
    from .pricing import PriceBook
    from .runner import RunConfig

__all__ = [
    "BATCH_STATE_SUFFIX",
    "MAX_FILE_BYTES",
    "MAX_FILE_REQUESTS",
    "BatchRun",
    "batch_state_path",
    "cancel_batches",
    "describe_batches",
    "run_via_batch",
    "to_openai_batch_line",
]

MAX_FILE_REQUESTS = 50_000
# OpenAI documents 200 MB; counted in decimal so a file is under the limit however they count.
MAX_FILE_BYTES = 200_000_000
OUTPUT_FORMATS = ("burstq", "openai-batch")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CONTROL_ATTEMPTS = 8  # per files/batches call, on top of the SDK's own 2 retries
JOURNAL_CHUNK = 1000
# Metadata lets a person find burstq's batches in the dashboard; the run id is also how a
# reattach tells our batches from others with the same input file (there are none normally).
META_RUN, META_SHARD = "burstq_run", "burstq_shard"

T = TypeVar("T")


def _url(endpoint: str) -> str:
    return "/v1" + ENDPOINT_PATHS[endpoint]


# -- what a line of an output or error file means -----------------------------------------------


Verdict = Literal["completed", "retry", "failed"]


@dataclass(slots=True)
class LineOutcome:
    verdict: Verdict
    error: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    status_code: int = 0
    request_id: str | None = None
    line_id: str | None = None


def _http_error(status: int, body: Any) -> tuple[Verdict, dict[str, Any]]:
    err = body.get("error") if isinstance(body, dict) else None
    message = (
        str(err.get("message"))
        if isinstance(err, dict) and err.get("message")
        else f"HTTP {status}"
    )
    code = err.get("code") if isinstance(err, dict) else None
    kind: str
    verdict: Verdict
    # The same taxonomy as client.py: only what can succeed later is resubmitted.
    if status in (401, 403):
        kind, verdict = "auth", "failed"
    elif status == 429 and code == "insufficient_quota":
        kind, verdict = "insufficient_quota", "failed"
    elif status == 429:
        kind, verdict = "rate_limited", "retry"
    elif status == 408:
        kind, verdict = "timeout", "retry"
    elif status == 409 or status >= 500:
        kind, verdict = "server_error", "retry"
    elif status == 413:
        kind, verdict = "request_too_large", "failed"
    else:
        kind, verdict = "bad_request", "failed"
    return verdict, {"type": kind, "message": message, "status_code": status}


def classify_line(entry: dict[str, Any], endpoint: str) -> LineOutcome:
    """Success, resubmit or give up, for one line of a batch's output or error file."""
    line_id = entry.get("id") if isinstance(entry.get("id"), str) else None
    err = entry.get("error")
    response = entry.get("response")
    if isinstance(err, dict) and err:
        code, message = err.get("code"), str(err.get("message") or "")
        kind = "batch_expired" if code == "batch_expired" else "batch_error"
        text = message if code == "batch_expired" else f"{code}: {message}"
        return LineOutcome(
            "retry", {"type": kind, "message": text, "status_code": None}, line_id=line_id
        )
    if not isinstance(response, dict):
        return LineOutcome(
            "retry",
            {
                "type": "malformed_response",
                "message": "a batch line with neither response nor error",
                "status_code": None,
            },
            line_id=line_id,
        )
    status = response.get("status_code")
    body = response.get("body")
    rid = response.get("request_id") if isinstance(response.get("request_id"), str) else None
    out = LineOutcome(
        "completed",
        None,
        body if isinstance(body, dict) else None,
        status if isinstance(status, int) else 0,
        rid,
        line_id,
    )
    # An HTTP error inside `response` is a failure even though `error` is null.
    if not isinstance(status, int) or status >= 400:
        out.verdict, out.error = _http_error(status if isinstance(status, int) else 500, body)
        return out
    problem = _body_problem(body, endpoint)
    if problem is not None:
        out.verdict = "retry"
        out.error = {"type": problem[0], "message": problem[1], "status_code": status}
    return out


def _body_problem(body: Any, endpoint: str) -> tuple[str, str] | None:
    if not isinstance(body, dict):
        return "malformed_response", "a 200 answer that is not a JSON object"
    if endpoint == "embeddings":
        items = body.get("data")
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(i, dict) and "embedding" in i for i in items)
        ):
            return "malformed_response", "answer has no data[].embedding"
        return None
    choices = body.get("choices")
    if (
        not isinstance(choices, list)
        or not choices
        or not isinstance(choices[0], dict)
        or not isinstance(choices[0].get("message"), dict)
    ):
        return "malformed_response", "answer has no choices[0].message"
    output, _ = extract_output("chat", body)
    if not (output or "").strip():
        return "empty_response", "the completion was empty"
    return None


# -- the run ------------------------------------------------------------------------------------


class _Stopped(Exception):
    """Ctrl-C / SIGTERM during a wait: leave the shard as the state file has it."""


class _Fatal(Exception):
    def __init__(self, error: FatalProviderError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class BatchSettings:
    batch_size: int
    completion_window: str
    output_format: str
    max_rounds: int
    poll_first: float
    poll_max: float
    batch_max_tokens: int | None = None


def settings_from(cfg: RunConfig, poll_interval: float | None) -> BatchSettings:
    batch_size = int(getattr(cfg, "batch_size", MAX_FILE_REQUESTS))
    if not 1 <= batch_size <= MAX_FILE_REQUESTS:
        raise UsageError(
            f"--batch-size must be 1 to {MAX_FILE_REQUESTS} (the Batch API's "
            f"limit per file), not {batch_size}"
        )
    fmt = str(getattr(cfg, "output_format", "burstq"))
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--output-format must be {' or '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    max_tokens = getattr(cfg, "batch_max_tokens", None)
    if poll_interval is None:
        poll_interval = getattr(cfg, "batch_poll", None)
    if poll_interval is None:
        # Real batches take minutes to hours; the simulated ones finish in about 2 s.
        poll_interval = 0.5 if cfg.simulate else 5.0
    return BatchSettings(
        batch_size=batch_size,
        completion_window=str(getattr(cfg, "completion_window", "24h")),
        output_format=fmt,
        max_rounds=cfg.max_retries + 1,
        poll_first=poll_interval,
        poll_max=max(poll_interval, min(60.0, poll_interval * 12)),
        batch_max_tokens=int(max_tokens) if max_tokens else None,
    )


class BatchRun:
    """One `--via batch` run: plan shards, drive each through the provider, record results."""

    def __init__(
        self,
        cfg: RunConfig,
        settings: BatchSettings,
        *,
        provider: Provider,
        prices: PriceBook,
        tally: Tally,
        warn: Callable[[str], None],
        state: BatchState,
        state_path: Path,
        done: Done,
        journal: Journal,
        budget: Budget | None,
        workdir: Path,
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.provider = provider
        self.prices = prices
        self.tally = tally
        self.warn = warn
        self.state = state
        self.state_path = state_path
        self.done = done
        self.journal = journal
        self.budget = budget
        self.workdir = workdir
        self.input = Path(cfg.input)
        self.held: dict[int, float] = {}  # budget reservations by input line, this run only
        self.budget_stopped = False
        self.signal: int | None = None
        self._stop = asyncio.Event()
        self._freed: dict[str, asyncio.Event] = {}  # a batch of this model ended
        self._waiting: set[str] = set()  # shards waiting for enqueued-token room
        self._uploads = asyncio.Semaphore(2)  # up to 2 x 200 MB in flight
        self._warned: set[str] = set()
        self._create_failures: dict[str, int] = {}

    # -- control --------------------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        """Ctrl-C / SIGTERM: stop waiting; batches keep running and a rerun reattaches."""
        if self.signal is None:
            self.signal = signum
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return
        raise _Stopped

    def save(self) -> None:
        self.state.save(self.state_path, fsync=self.cfg.fsync)

    # -- planning -------------------------------------------------------------------------------
    def plan_new(self, src: FileSource) -> None:
        """Shards for the requests that have neither a record nor a place in a shard."""
        claimed = Done()
        for shard in self.state.shards:
            if shard.active:
                for line in shard.lines.values():
                    claimed.add(line)
        for p in self.state.retry:
            claimed.add(p.line)
        fresh: list[Pending] = []
        for req in src.requests():
            if req.line in claimed:
                continue
            if self.budget is not None:
                held = self.budget.reserve(req)
                if held is None:
                    self.budget_stopped = True  # the rest waits for a rerun with a higher cap
                    break
                self.held[req.line] = held
            fresh.append(_pending(req))
        self._pack(fresh)
        self._pack_retries()
        self.save()

    def _pack_retries(self) -> list[Shard]:
        carried, self.state.retry = self.state.retry, []
        return self._pack(carried)

    def _pack(self, items: Iterable[Pending]) -> list[Shard]:
        st, s = self.state, self.settings
        current: dict[tuple[str, str, int], Shard] = {}
        made: list[Shard] = []
        for p in items:
            key = (p.endpoint, p.model, p.round)
            limit = min(s.batch_size, st.group_limits.get(p.model, MAX_FILE_REQUESTS))
            shard = current.get(key)
            if (
                shard is None
                or len(shard.lines) >= limit
                or shard.bytes + p.bytes > MAX_FILE_BYTES
                or (s.batch_max_tokens and shard.tokens + p.tokens > s.batch_max_tokens)
            ):
                shard = Shard(
                    id=f"s{st.next_shard:05d}", endpoint=p.endpoint, model=p.model, round=p.round
                )
                st.next_shard += 1
                current[key] = shard
                made.append(shard)
            shard.lines[p.id] = p.line
            shard.bytes += p.bytes
            shard.tokens += p.tokens
            shard.metadata = shard.metadata or p.metadata
            if p.list_input:
                shard.list_inputs.append(p.id)
        for shard in made:
            # File order, so line k of the batch file is the k-th entry (validation errors
            # name file lines).
            shard.lines = dict(sorted(shard.lines.items(), key=lambda kv: kv[1]))
            shard.requests = len(shard.lines)
        st.shards.extend(made)
        return made

    def _shard_file(self, shard: Shard) -> Path:
        return self.workdir / f"{shard.id}.jsonl"

    def _materialize(self, shards: list[Shard]) -> None:
        """Write the batch files of `shards` in one pass over INPUT (runs in a thread)."""
        where: dict[int, tuple[Shard, str]] = {}
        for shard in shards:
            for cid, line in shard.lines.items():
                where[line] = (shard, cid)
        files = {s.id: self._shard_file(s).open("wb") for s in shards}
        try:
            with self.input.open("rb") as f:
                for line, raw in enumerate(f, start=1):
                    hit = where.pop(line, None)
                    if hit is None:
                        continue
                    shard, cid = hit
                    req = parse_line(raw, line, self.cfg.model)
                    if not isinstance(req, Request) or req.id != cid:
                        raise UsageError(
                            f"{self.input}:{line} no longer holds request {cid!r}"
                            "; the input changed under a running job"
                        )
                    files[shard.id].write(orjson.dumps(_batch_line(req)) + b"\n")
        finally:
            for fh in files.values():
                fh.close()
        if where:
            raise UsageError(f"{self.input} is shorter than when its batches were planned")

    def _read_metadata(self, lines: set[int]) -> dict[int, Any]:
        found: dict[int, Any] = {}
        with self.input.open("rb") as f:
            for line, raw in enumerate(f, start=1):
                if line in lines:
                    req = parse_line(raw, line, self.cfg.model)
                    if isinstance(req, Request) and req.metadata is not None:
                        found[line] = req.metadata
        return found

    # -- supervising ----------------------------------------------------------------------------
    async def supervise(self) -> RunOutcome:
        self.tally.started = time.time()
        self._update_in_flight()
        tasks: dict[asyncio.Task[None], Shard] = {}

        def start(shards: Iterable[Shard]) -> None:
            for shard in shards:
                tasks[asyncio.create_task(self._drive(shard))] = shard

        start(s for s in self.state.shards if s.active)
        error: FatalProviderError | None = None
        try:
            while tasks:
                finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    del tasks[task]
                    exc = task.exception()
                    if isinstance(exc, _Fatal):
                        error = error or exc.error
                    elif exc is not None:
                        raise exc
                if error is not None:
                    break
                if not self.stopping and self.state.retry:
                    made = self._pack_retries()
                    self.save()
                    start(made)
                self._update_in_flight()
        finally:
            # A cancelled run (or a fatal error) leaves every shard where the state file has
            # it: the write-ahead order makes any instant safe to stop at.
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        self._update_in_flight()
        if error is not None:
            return RunOutcome("fatal", self.tally, None, error)
        if self.stopping:
            return RunOutcome("interrupted", self.tally, self.signal)
        if self.budget_stopped:
            return RunOutcome("budget", self.tally)
        return RunOutcome("done", self.tally)

    def _update_in_flight(self) -> None:
        self.tally.in_flight = sum(
            len(s.lines) for s in self.state.shards if s.active and s.state == "submitted"
        )

    async def _control(
        self, what: str, call: Callable[[], Awaitable[T]], *, handles: frozenset[str] = frozenset()
    ) -> T:
        """A files/batches call. Error kinds in `handles` go back to the caller as
        ProviderError; other transient ones are retried with backoff; the rest stop the run."""
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                err = classify_exception(exc)
                if err is None:
                    raise
                if err.kind in handles:
                    raise err from exc
                attempt += 1
                if err.kind != "transient" or attempt >= CONTROL_ATTEMPTS:
                    raise _Fatal(FatalProviderError(err.type, f"{what}: {err.message}")) from exc
                self._warn_retry(what, err)
                await self._sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return min(30.0, max(0.05, self.cfg.backoff_base) * 2.0 ** (attempt - 1))

    def _warn_retry(self, what: str, err: ProviderError) -> None:
        key = what.split(" ")[0]
        if key not in self._warned:  # once per kind of call: a flaky hour is not 1,000 lines
            self._warned.add(key)
            self.warn(f"{what} failed ({err.message}); retrying")

    async def _drive(self, shard: Shard) -> None:
        """Take one shard from wherever the state file left it to collected."""
        try:
            while shard.active and not self.stopping:
                if shard.state == "new":
                    await self._upload(shard)
                elif shard.state in ("uploaded", "creating"):
                    await self._create(shard)
                elif shard.state == "submitted":
                    await self._poll_and_collect(shard)
        except _Stopped:
            return

    async def _upload(self, shard: Shard) -> None:
        path = self._shard_file(shard)
        if not path.exists():
            await asyncio.to_thread(self._materialize, [shard])
        name = f"burstq-{self.state.run_id}-{shard.id}.jsonl"
        async with self._uploads:
            try:
                obj = await self._control(
                    f"uploading {name}",
                    lambda: self.provider.upload(path, name),
                    handles=frozenset({"rejected"}),
                )
            except ProviderError as err:
                self._fail_shard(shard, err)
                return
        # Recorded before the batch is created: a kill after this point is recognized on
        # reattach by the batch's input_file_id.
        shard.file_id = str(obj["id"])
        shard.uploaded_at = obj.get("created_at")
        shard.state = "uploaded"
        self.save()
        path.unlink(missing_ok=True)

    async def _create(self, shard: Shard) -> None:
        assert shard.file_id is not None
        file_id = shard.file_id
        if shard.state == "creating":
            # A create may have reached the provider before the kill (or the timeout): adopt
            # its batch rather than make a second one.
            found = await self._control(
                f"listing batches for {shard.id}",
                lambda: self.provider.find(file_id, shard.uploaded_at, shard.tried),
            )
            if found is not None:
                self._submitted(shard, found)
                return
        else:
            shard.state = "creating"
            self.save()
        meta = {META_RUN: self.state.run_id, META_SHARD: shard.id}
        what = f"creating the batch for {shard.id}"
        try:
            batch = await self._control(
                what,
                lambda: self.provider.create(
                    file_id, _url(shard.endpoint), self.settings.completion_window, meta
                ),
                handles=frozenset({"transient", "rejected", "not_found"}),
            )
        except ProviderError as err:
            if err.kind == "transient":
                # Never simply sent again: the state stays "creating", so the next pass looks
                # for a batch this attempt may have made before it creates one.
                failures = self._create_failures.get(shard.id, 0) + 1
                self._create_failures[shard.id] = failures
                if failures >= CONTROL_ATTEMPTS:
                    raise _Fatal(FatalProviderError(err.type, f"{what}: {err.message}")) from err
                self._warn_retry(what, err)
                await self._sleep(self._backoff(failures))
                return
            if err.kind == "not_found":  # the input file is gone (expired): upload again
                self.warn(f"input file {file_id} of {shard.id} is gone; uploading it again")
                shard.state, shard.file_id = "new", None
                self.save()
                return
            self._fail_shard(shard, err)
            return
        self._submitted(shard, batch)

    def _submitted(self, shard: Shard, batch: dict[str, Any]) -> None:
        shard.batch_id = str(batch["id"])
        shard.status = batch.get("status")
        shard.state = "submitted"
        self.save()
        self.tally.attempts += len(shard.lines)
        if shard.round > 1:
            self.tally.retries += len(shard.lines)
        self._update_in_flight()

    async def _poll_and_collect(self, shard: Shard) -> None:
        assert shard.batch_id is not None
        batch_id = shard.batch_id
        interval = self.settings.poll_first
        while True:
            try:
                batch = await self._control(
                    f"polling {batch_id}",
                    lambda: self.provider.retrieve(batch_id),
                    handles=frozenset({"not_found"}),
                )
            except ProviderError:
                # Not this account's (another key) or deleted: nothing will come back from
                # it, so its requests go to a new batch.
                self.warn(
                    f"batch {batch_id} ({shard.id}) no longer exists at the provider; "
                    f"resubmitting its {len(shard.lines)} requests"
                )
                shard.state, shard.batch_id, shard.file_id = "new", None, None
                self.save()
                return
            if batch.get("status") != shard.status:
                shard.status = batch.get("status")
                self.save()
            if shard.status in TERMINAL:
                break
            await self._sleep(interval)
            interval = min(self.settings.poll_max, interval * 1.5)
        if await self._token_limited(shard, batch):
            return
        await self._collect(shard, batch)

    async def _token_limited(self, shard: Shard, batch: dict[str, Any]) -> bool:
        """The enqueued-token limit refused this batch: wait for room, or split the shard."""
        errors = (batch.get("errors") or {}).get("data") or []
        if (
            batch.get("status") != "failed"
            or not errors
            or not all(e.get("code") == "token_limit_exceeded" for e in errors)
        ):
            return False
        assert shard.batch_id is not None
        shard.tried.append(shard.batch_id)
        shard.batch_id, shard.status, shard.state = None, None, "uploaded"
        others = [
            s
            for s in self.state.shards
            if s is not shard
            and s.active
            and s.model == shard.model
            and s.state == "submitted"
            and s.id not in self._waiting
        ]
        learned = self.state.group_limits.get(shard.model)
        if others and (learned is None or len(shard.lines) <= learned):
            # Retrying costs no round: the requests never ran.
            self.save()
            self._waiting.add(shard.id)
            try:
                await self._wait_freed(shard.model)
            finally:
                self._waiting.discard(shard.id)
            return True
        if len(shard.lines) > 1:
            # Too big on its own (or bigger than a size already refused): halve this model's
            # shards and plan these requests again.
            limit = min(learned or len(shard.lines), len(shard.lines) // 2)
            self.state.group_limits[shard.model] = max(1, limit)
            self.warn(
                f"{shard.model}: the provider's enqueued-token limit refused a batch of "
                f"{len(shard.lines)} requests; resubmitting in batches of at most "
                f"{self.state.group_limits[shard.model]}"
            )
            self.state.retry.extend(_pendings(shard))
            self._close(shard)
            self.save()
            return True
        return False  # one request over the limit: an ordinary failed round

    async def _wait_freed(self, model: str) -> None:
        event = self._freed.setdefault(model, asyncio.Event())
        stop = asyncio.ensure_future(self._stop.wait())
        freed = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({stop, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            freed.cancel()
        if self.stopping:
            raise _Stopped

    def _notify_freed(self, model: str) -> None:
        event = self._freed.pop(model, None)
        if event is not None:
            event.set()

    def _close(self, shard: Shard) -> None:
        shard.state = "done"
        shard.lines = {}
        shard.list_inputs = []
        shard.tried = []
        self._notify_freed(shard.model)

    # -- collecting -----------------------------------------------------------------------------
    async def _collect(self, shard: Shard, batch: dict[str, Any]) -> None:
        meta = (
            await asyncio.to_thread(self._read_metadata, set(shard.lines.values()))
            if shard.metadata
            else {}
        )
        status = str(batch.get("status"))
        latency = _latency_ms(batch)
        seen: set[str] = set()
        records: list[dict[str, Any]] = []
        carried: list[Pending] = []
        list_inputs = set(shard.list_inputs)

        def settle(cid: str, line: int, out: LineOutcome) -> None:
            seen.add(cid)
            if line in self.done:
                return  # recorded before a kill, the state file did not yet know
            if out.verdict == "retry" and shard.round < self.settings.max_rounds:
                carried.append(_pending_of(shard, cid, line, out.error, cid in list_inputs))
                return
            result = self._result(
                shard, cid, line, out, latency, meta.get(line), cid in list_inputs
            )
            records.append(self._emit(result, out))
            self.done.add(line)
            if len(records) >= JOURNAL_CHUNK:
                self.journal.write(records)
                records.clear()

        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            path = await self._download(shard, str(file_id)) if file_id else None
            if path is None:
                continue
            try:
                # Line by line from disk: 50,000 embeddings are gigabytes as Python objects.
                for entry in _entries(path):
                    cid = entry.get("custom_id")
                    line = shard.lines.get(cid) if isinstance(cid, str) else None
                    if line is None or cid in seen:
                        continue
                    settle(str(cid), line, classify_line(entry, shard.endpoint))
            finally:
                path.unlink(missing_ok=True)
        if status == "failed":
            # Validation refused the file: errors may name file lines (bad requests, given
            # up on at once); the rest never ran and go to the next round.
            by_file_line = list(shard.lines.items())
            for e in (batch.get("errors") or {}).get("data") or []:
                n = e.get("line")
                if isinstance(n, int) and 1 <= n <= len(by_file_line):
                    cid, line = by_file_line[n - 1]
                    if cid not in seen:
                        settle(
                            cid,
                            line,
                            LineOutcome(
                                "failed",
                                {
                                    "type": "bad_request",
                                    "status_code": None,
                                    "message": f"batch validation: {e.get('code')}: "
                                    f"{e.get('message')}",
                                },
                            ),
                        )
        why = _batch_failure(batch)
        for cid, line in shard.lines.items():
            if cid not in seen:
                # A cancelled batch was stopped by someone: its requests are not forced
                # through again.
                verdict: Verdict = "failed" if status == "cancelled" else "retry"
                settle(cid, line, LineOutcome(verdict, why))
        self.journal.write(records)
        # Records are on disk; only now may the state forget the shard.
        self.state.retry.extend(carried)
        self._close(shard)
        self.save()
        self._update_in_flight()

    async def _download(self, shard: Shard, file_id: str) -> Path | None:
        dest = self.workdir / f"{shard.id}-{file_id}.jsonl"
        try:
            await self._control(
                f"downloading {file_id}",
                lambda: self.provider.download(file_id, dest),
                handles=frozenset({"not_found", "rejected"}),
            )
        except ProviderError as err:
            # Gone (files expire after 30 days): its lines count as unanswered, so retried.
            self.warn(f"cannot download {file_id} of batch {shard.batch_id}: {err.message}")
            dest.unlink(missing_ok=True)
            return None
        return dest

    def _result(
        self,
        shard: Shard,
        cid: str,
        line: int,
        out: LineOutcome,
        latency: float | None,
        metadata: Any,
        list_input: bool,
    ) -> Result:
        result = Result(
            request_id=cid,
            line=line,
            status="failed",
            model=shard.model,
            latency_ms=latency,
            attempts=shard.round,
            metadata=metadata,
            finished_at=now_iso(),
            error=out.error,
        )
        body = out.body
        if out.verdict != "completed" or body is None:
            return result
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        text, vectors = extract_output(shard.endpoint, body)
        if text is not None:
            text = text.strip()
            if len(text) > self.cfg.max_output_chars:
                text, result.truncated = text[: self.cfg.max_output_chars], True
        result.status, result.error = "completed", None
        result.output, result.usage = text, usage
        if vectors is not None:
            result.embedding = vectors if list_input else vectors[0]
        # The answering snapshot (e.g. gpt-4o-mini-2024-07-18) is what the body names.
        result.model_used = str(body.get("model") or shard.model)
        result.cost_usd = self.prices.cost(shard.model, usage, batch=True)
        return result

    def _emit(self, result: Result, out: LineOutcome | None) -> dict[str, Any]:
        self.tally.count(result)
        if self.budget is not None:
            self.budget.settle(self.held.pop(result.line, 0.0), result.cost_usd)
        record = result.record()
        if self.settings.output_format == "openai-batch":
            return to_openai_batch_line(
                record,
                out.body if out else None,
                out.status_code if out else 0,
                out.request_id if out else None,
                line_id=out.line_id if out else None,
            )
        return record

    def _fail_shard(self, shard: Shard, err: ProviderError) -> None:
        """The provider refused the file or the batch (a 4xx): every request of it fails."""
        self.warn(f"{shard.id} ({shard.model}, {len(shard.lines)} requests) refused: {err.message}")
        error = {"type": err.type, "message": err.message, "status_code": err.status_code}
        records = []
        for cid, line in shard.lines.items():
            if line not in self.done:
                out = LineOutcome("failed", error)
                result = Result(
                    request_id=cid,
                    line=line,
                    status="failed",
                    model=shard.model,
                    attempts=shard.round,
                    error=error,
                    finished_at=now_iso(),
                )
                records.append(self._emit(result, out))
                self.done.add(line)
        self.journal.write(records)
        self._close(shard)
        self.save()

    def record_invalid(self, items: list[InvalidLine]) -> None:
        self.journal.write([self._emit(invalid_result(item), None) for item in items])
        for item in items:
            self.done.add(item.line)


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for raw in f:
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn line is a request without an answer: it is retried
            if isinstance(entry, dict):
                yield entry


def _latency_ms(batch: dict[str, Any]) -> float | None:
    created = batch.get("created_at")
    ended = next(
        (
            batch.get(k)
            for k in ("completed_at", "expired_at", "failed_at", "cancelled_at")
            if batch.get(k)
        ),
        None,
    )
    if not isinstance(created, int | float) or not isinstance(ended, int | float):
        return None
    return max(0.0, (float(ended) - float(created)) * 1000.0)


def _batch_failure(batch: dict[str, Any]) -> dict[str, Any]:
    status = str(batch.get("status"))
    errors = (batch.get("errors") or {}).get("data") or []
    detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3])
    if status == "expired":
        return {
            "type": "batch_expired",
            "status_code": None,
            "message": f"batch {batch.get('id')} expired before this request ran",
        }
    return {
        "type": f"batch_{status}",
        "status_code": None,
        "message": f"batch {batch.get('id')} ended {status} without an answer for this request"
        + (f" ({detail})" if detail else ""),
    }


def _batch_line(req: Request) -> dict[str, Any]:
    return {
        "custom_id": req.id,
        "method": "POST",
        "url": _url(req.endpoint),
        "body": {"model": req.model, **req.body},
    }


def _pending(req: Request) -> Pending:
    size = len(orjson.dumps(_batch_line(req))) + 1
    return Pending(
        id=req.id,
        line=req.line,
        endpoint=req.endpoint,
        model=req.model,
        round=1,
        bytes=size,
        tokens=req.est_tokens,
        metadata=req.metadata is not None,
        list_input=isinstance(req.body.get("input"), list),
    )


def _pending_of(
    shard: Shard,
    cid: str,
    line: int,
    error: dict[str, Any] | None,
    list_input: bool,
    *,
    same_round: bool = False,
) -> Pending:
    n = max(1, shard.requests)
    return Pending(
        id=cid,
        line=line,
        endpoint=shard.endpoint,
        model=shard.model,
        round=shard.round if same_round else shard.round + 1,
        bytes=shard.bytes // n + 1,
        tokens=shard.tokens // n + 1,
        metadata=shard.metadata,
        list_input=list_input,
        error=error,
    )


def _pendings(shard: Shard) -> list[Pending]:
    lists = set(shard.list_inputs)
    return [
        _pending_of(shard, cid, line, None, cid in lists, same_round=True)
        for cid, line in shard.lines.items()
    ]


# -- entry points -------------------------------------------------------------------------------


async def run_via_batch(
    cfg: RunConfig,
    *,
    tally: Tally,
    warn: Callable[[str], None],
    poll_interval: float | None = None,
    on_ready: Callable[[BatchRun], None] | None = None,
) -> RunOutcome:
    """`burstq run INPUT -o OUTPUT --via batch`: the whole job, resumable by rerunning it.

    `on_ready` receives the BatchRun once it is set up (e.g. to wire signals to
    `request_stop`). Cancelling the task is safe at any instant too: the state file is
    always consistent and the rerun reattaches.
    """
    from .runner import provider, shaping

    settings = settings_from(cfg, poll_interval)
    if cfg.input == "-":
        raise UsageError(
            "--via batch needs INPUT as a file, not stdin (it is read again "
            "to build each batch file)"
        )
    if cfg.output == "-":
        raise UsageError("--via batch needs -o OUTPUT as a file: the batch state lives next to it")
    if cfg.fallback_models:
        warn("--fallback-model is not used with --via batch (each batch names one model)")
    in_path, out_path = Path(cfg.input), Path(cfg.output)

    simulate_server = None
    try:
        base_url, api_key = cfg.base_url, cfg.api_key
        if cfg.simulate:
            from .mock_server import MockConfig, ThreadedMockServer

            simulate_server = ThreadedMockServer(MockConfig(batch_seconds=2.0, seed=7))
            simulate_server.start()
            base_url, api_key = simulate_server.base_url, "sk-simulate"
        base_url, prices = provider(cfg, base_url, api_key, warn)
        shape = dict(shaping(cfg))
        if settings.output_format != "burstq":
            shape.setdefault("output_format", settings.output_format)
        fingerprint: dict[str, Any] = {
            "input": cfg.input,
            "shaping": shape,
            "input_sha256": file_digest(in_path),
        }
        # The simulated provider is new each run: its batches cannot be reattached to.
        state_url = "simulate" if cfg.simulate else public_url(base_url)
        client = make_client(base_url, api_key, cfg.timeout)
        try:
            return await _run(
                cfg,
                settings,
                Provider(client),
                prices,
                tally,
                warn,
                fingerprint,
                state_url,
                in_path,
                out_path,
                on_ready,
            )
        finally:
            await client.close()
    finally:
        if simulate_server is not None:
            simulate_server.close()


async def _run(
    cfg: RunConfig,
    settings: BatchSettings,
    provider: Provider,
    prices: PriceBook,
    tally: Tally,
    warn: Callable[[str], None],
    fingerprint: dict[str, Any],
    state_url: str,
    in_path: Path,
    out_path: Path,
    on_ready: Callable[[BatchRun], None] | None,
) -> RunOutcome:
    state_path = batch_state_path(out_path)
    old = load_state(state_path)
    if cfg.restart and old is not None:
        await _cancel_active(provider, old, warn)
        state_path.unlink(missing_ok=True)
        old = None
    if settings.output_format == "openai-batch":
        resume = resume_openai_batch(
            out_path,
            in_path,
            fingerprint,
            default_model=cfg.model,
            restart=cfg.restart,
            retry_failed=cfg.retry_failed,
        )
    else:
        resume = open_for_resume(
            out_path, fingerprint, restart=cfg.restart, retry_failed=cfg.retry_failed
        )
    tally.skipped, tally.skipped_failed = resume.records, resume.failed
    if resume.repaired_bytes:
        warn(
            f"repaired a torn last line in {out_path} ({resume.repaired_bytes} bytes); "
            "that request will be redone"
        )
    if old is not None:
        if old.input_sha256 != fingerprint["input_sha256"]:
            raise ResumeMismatch(
                f"{state_path} tracks batches of another input ({old.input}, "
                "since changed or replaced). Use --restart to start over, or "
                "another -o OUTPUT."
            )
        if (
            old.base_url != state_url
            and any(s.active for s in old.shards)
            and "simulate" not in (old.base_url, state_url)
        ):
            raise ResumeMismatch(
                f"{state_path} tracks batches running at {old.base_url}; "
                "rerun with that --base-url to collect them, or --restart."
            )
        old.base_url = state_url
    state = old or BatchState(
        run_id=secrets.token_hex(6),
        input=cfg.input,
        input_sha256=fingerprint["input_sha256"],
        base_url=state_url,
    )
    budget = (
        Budget(cfg.max_cost, worst_case(prices, cfg.budget_max_tokens, batch=True))
        if cfg.max_cost is not None
        else None
    )
    journal = Journal(out_path, fsync=cfg.fsync)
    workdir = Path(tempfile.mkdtemp(prefix="burstq-batch-"))
    try:
        run = BatchRun(
            cfg,
            settings,
            provider=provider,
            prices=prices,
            tally=tally,
            warn=warn,
            state=state,
            state_path=state_path,
            done=resume.done,
            journal=journal,
            budget=budget,
            workdir=workdir,
        )
        src = FileSource(in_path, cfg.model)
        invalid: list[InvalidLine] = []
        src.scan(resume.done, invalid.append)
        tally.total = src.total
        run.record_invalid(invalid)
        run.plan_new(src)
        fresh = [s for s in state.shards if s.state == "new"]
        if fresh:
            await asyncio.to_thread(run._materialize, fresh)
        if on_ready is not None:
            on_ready(run)
        return await run.supervise()
    finally:
        journal.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def _cancel_active(
    provider: Provider, state: BatchState, warn: Callable[[str], None]
) -> list[str]:
    cancelled = []
    for shard in state.shards:
        if shard.active and shard.batch_id and shard.status not in TERMINAL:
            try:
                await provider.cancel(shard.batch_id)
                cancelled.append(shard.batch_id)
            except Exception as exc:
                if classify_exception(exc) is None:
                    raise
                warn(f"could not cancel batch {shard.batch_id}: {exc}")
    if cancelled:
        warn(
            f"cancelled {len(cancelled)} running batch(es) of the previous run: "
            + ", ".join(cancelled)
        )
    return cancelled


def describe_batches(output: Path) -> dict[str, Any] | None:
    """What OUTPUT.batches.json knows (no network): for a `burstq batch status` command."""
    state = load_state(batch_state_path(output))
    if state is None:
        return None
    shards = [
        {
            "shard": s.id,
            "endpoint": s.endpoint,
            "model": s.model,
            "round": s.round,
            "state": s.state,
            "status": s.status,
            "batch_id": s.batch_id,
            "file_id": s.file_id,
            "requests": s.requests,
        }
        for s in state.shards
    ]
    return {
        "input": state.input,
        "base_url": state.base_url,
        "run_id": state.run_id,
        "active": sum(1 for s in state.shards if s.active),
        "waiting_for_next_round": len(state.retry),
        "shards": shards,
    }


async def cancel_batches(cfg: RunConfig, *, warn: Callable[[str], None]) -> list[str]:
    """Cancel the running batches recorded next to cfg.output (a `burstq batch cancel`).

    A rerun then records their requests as failed (batch_cancelled); --retry-failed redoes
    them.
    """
    from .runner import OPENAI_BASE_URL

    state = load_state(batch_state_path(Path(cfg.output)))
    if state is None:
        return []
    client = make_client(cfg.base_url or OPENAI_BASE_URL, cfg.api_key, cfg.timeout)
    try:
        return await _cancel_active(Provider(client), state, warn)
    finally:
        await client.close()
