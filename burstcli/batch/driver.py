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
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..config import JobSpec
from ..errors import FatalProviderError
from ..files.formats import to_openai_batch_line
from ..files.journal import Journal
from ..files.reader import STOP_EVERY, Done, FileSource, ScanStopped
from ..files.rows import parser_for
from ..models import (
    InvalidLine,
    Result,
    RunOutcome,
    Tally,
    invalid_result,
    now_iso,
    unwritable,
)
from ..money.budget import Budget
from .lines import (
    LineOutcome,
    Verdict,
    batch_failure,
    check_structured,
    classify_line,
    endpoint_url,
    entries,
    latency_ms,
    line_result,
    pending,
    pending_of,
    pendings,
    task_validator,
)
from .plan import BatchSettings, pack, read_metadata, write_shard_files
from .provider import Provider, ProviderError, classify_exception
from .state import BatchState, Pending, Shard

if TYPE_CHECKING:
    from ..money.pricing import PriceBook

OUTPUT_FORMATS = ("burstq", "openai-batch")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CONTROL_ATTEMPTS = 8  # per files/batches call, on top of the SDK's own 2 retries
JOURNAL_CHUNK = 1000
# Metadata lets a person find burstq's batches in the dashboard; the run id is also how a
# reattach tells our batches from others with the same input file (there are none normally).
META_RUN, META_SHARD = "burstq_run", "burstq_shard"

T = TypeVar("T")


# -- the run -------------------------------------------------------------------------------------


class _Stopped(Exception):
    """Ctrl-C / SIGTERM during a wait: leave the shard as the state file has it."""


class _Fatal(Exception):
    def __init__(self, error: FatalProviderError) -> None:
        super().__init__(str(error))
        self.error = error


class BatchRun:
    """One `--via batch` run: plan shards, drive each through the provider, record results."""

    def __init__(
        self,
        job: JobSpec,
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
        self.job = job
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
        self.input = Path(job.input)
        self.parser = parser_for(job)  # request lines, or data rows through the template
        self.validator = task_validator(job)
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
        self.state.save(self.state_path, fsync=self.job.fsync)

    # -- planning -------------------------------------------------------------------------------
    def plan_new(self, src: FileSource, should_stop: Callable[[], bool] | None = None) -> None:
        """Shards for the requests that have neither a record nor a place in a shard. Runs in
        a thread; a stop (ScanStopped) comes before the state is touched."""
        claimed = Done()
        for shard in self.state.shards:
            if shard.active:
                for line in shard.lines.values():
                    claimed.add(line)
        for p in self.state.retry:
            claimed.add(p.line)
        fresh: list[Pending] = []
        for n, req in enumerate(src.requests()):
            if should_stop is not None and n % STOP_EVERY == 0 and should_stop():
                raise ScanStopped
            if req.line in claimed:
                continue
            if self.budget is not None:
                held = self.budget.reserve(req)
                if held is None:
                    self.budget_stopped = True  # the rest waits for a rerun with a higher cap
                    break
                self.held[req.line] = held
            fresh.append(pending(req))
        pack(self.state, self.settings, fresh)
        self._pack_retries()
        self.save()

    def _pack_retries(self) -> list[Shard]:
        carried, self.state.retry = self.state.retry, []
        return pack(self.state, self.settings, carried)

    def _shard_file(self, shard: Shard) -> Path:
        return self.workdir / f"{shard.id}.jsonl"

    def materialize(self, shards: list[Shard]) -> None:
        """Write the batch files of `shards` in one pass over INPUT (runs in a thread)."""
        write_shard_files(self.input, self.parser, shards, self._shard_file)

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
        return min(30.0, max(0.05, self.settings.backoff_base) * 2.0 ** (attempt - 1))

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
            await asyncio.to_thread(self.materialize, [shard])
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
                    file_id, endpoint_url(shard.endpoint), self.settings.completion_window, meta
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
            # A batch whose create call is still on its way may already hold the tokens
            # that got this one refused: it counts as one to wait for.
            and s.state in ("creating", "submitted")
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
            self._close(shard, pendings(shard))
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

    def _close(self, shard: Shard, carried: Iterable[Pending] = ()) -> None:
        """Forget `shard` and hand its unfinished requests to the next round, in one step with
        no await and nothing that can fail between: a save by another shard's task can never
        store the retries of a shard that still looks submitted (they would be sent twice)."""
        self.state.retry.extend(carried)
        shard.state = "done"
        shard.lines = {}
        shard.list_inputs = []
        shard.tried = []
        self._notify_freed(shard.model)

    # -- collecting -----------------------------------------------------------------------------
    async def _collect(self, shard: Shard, batch: dict[str, Any]) -> None:
        meta = (
            await asyncio.to_thread(
                read_metadata, self.input, self.parser, set(shard.lines.values())
            )
            if shard.metadata
            else {}
        )
        status = str(batch.get("status"))
        latency = latency_ms(batch)
        seen: set[str] = set()
        records: list[bytes] = []
        carried: list[Pending] = []
        list_inputs = set(shard.list_inputs)

        def settle(cid: str, line: int, out: LineOutcome) -> None:
            seen.add(cid)
            if line in self.done:
                return  # recorded before a kill, the state file did not yet know
            if out.verdict == "retry" and shard.round < self.settings.max_rounds:
                carried.append(pending_of(shard, cid, line, out.error, cid in list_inputs))
                return
            result = line_result(
                shard,
                cid,
                line,
                out,
                latency,
                meta.get(line),
                cid in list_inputs,
                self.job.max_output_chars,
                self.prices.cost,
            )
            records.append(self._emit(result, out))
            self.done.add(line)
            if len(records) >= JOURNAL_CHUNK:
                self.journal.write_lines(records)
                records.clear()

        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            path = await self._download(shard, str(file_id)) if file_id else None
            if path is None:
                continue
            try:
                # Line by line from disk: 50,000 embeddings are gigabytes as Python objects.
                for entry in entries(path):
                    cid = entry.get("custom_id")
                    line = shard.lines.get(cid) if isinstance(cid, str) else None
                    if line is None or cid in seen:
                        continue
                    out = classify_line(entry, shard.endpoint)
                    settle(str(cid), line, check_structured(out, self.validator, self.job))
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
        why = batch_failure(batch)
        for cid, line in shard.lines.items():
            if cid not in seen:
                # A cancelled batch was stopped by someone: its requests are not forced
                # through again.
                verdict: Verdict = "failed" if status == "cancelled" else "retry"
                settle(cid, line, LineOutcome(verdict, why))
        self.journal.write_lines(records)
        # Records are on disk; only now may the state forget the shard.
        self._close(shard, carried)
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

    def _emit(self, result: Result, out: LineOutcome | None) -> bytes:
        """The serialized record of `result`, counted in the tally. One that cannot be
        serialized (a value JSON cannot hold) becomes that line's failed record, counted as
        such, and never takes the other records of its write down with it."""
        try:
            line = orjson.dumps(self._format(result, out))
        except (TypeError, ValueError) as exc:
            result, out = unwritable(result, exc), None
            line = orjson.dumps(self._format(result, out))
        self.tally.count(result)
        if self.budget is not None:
            self.budget.settle(self.held.pop(result.line, 0.0), result.cost_usd)
        return line

    def _format(self, result: Result, out: LineOutcome | None) -> dict[str, Any]:
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
        self.journal.write_lines(records)
        self._close(shard)
        self.save()

    def record_invalid(self, items: list[InvalidLine]) -> None:
        self.journal.write_lines([self._emit(invalid_result(item), None) for item in items])
        for item in items:
            self.done.add(item.line)
