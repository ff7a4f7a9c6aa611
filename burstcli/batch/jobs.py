"""Entry points of `--via batch`: set up a run (resume state, budget, journal), drive it,
and the `burstq batch status|cancel` helpers. `run.py` resolves the provider first.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import BudgetSpec, JobSpec
from ..errors import ResumeMismatch, UsageError
from ..files.formats import resume_openai_batch
from ..files.journal import Journal, open_for_resume
from ..files.reader import FileSource, ScanStopped, file_digest
from ..models import InvalidLine, RunOutcome, Tally
from ..money.budget import Budget, worst_case
from .driver import OUTPUT_FORMATS, TERMINAL, BatchRun
from .plan import MAX_FILE_REQUESTS, BatchSettings
from .provider import Provider, classify_exception, make_client
from .state import BatchState, batch_state_path, load_state, public_url

if TYPE_CHECKING:
    from ..money.pricing import PriceBook


def batch_settings(
    *,
    batch_size: int = MAX_FILE_REQUESTS,
    completion_window: str = "24h",
    output_format: str = "burstq",
    max_retries: int = 5,
    backoff_base: float = 0.5,
    poll_interval: float | None = None,
    simulate: bool = False,
    batch_max_tokens: int | None = None,
) -> BatchSettings:
    if not 1 <= batch_size <= MAX_FILE_REQUESTS:
        raise UsageError(
            f"--batch-size must be 1 to {MAX_FILE_REQUESTS} (the Batch API's "
            f"limit per file), not {batch_size}"
        )
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(
            f"--output-format must be {' or '.join(OUTPUT_FORMATS)}, not {output_format!r}"
        )
    if poll_interval is None:
        # Real batches take minutes to hours; the simulated ones finish in about 2 s.
        poll_interval = 0.5 if simulate else 5.0
    return BatchSettings(
        batch_size=batch_size,
        completion_window=completion_window,
        output_format=output_format,
        max_rounds=max_retries + 1,
        poll_first=poll_interval,
        poll_max=max(poll_interval, min(60.0, poll_interval * 12)),
        backoff_base=backoff_base,
        batch_max_tokens=batch_max_tokens or None,
    )


def check_batch_job(job: JobSpec, fallback_models: list[str], warn: Callable[[str], None]) -> None:
    if job.input == "-":
        raise UsageError(
            "--via batch needs INPUT as a file, not stdin (it is read again "
            "to build each batch file)"
        )
    if job.output == "-":
        raise UsageError("--via batch needs -o OUTPUT as a file: the batch state lives next to it")
    if fallback_models:
        warn("--fallback-model is not used with --via batch (each batch names one model)")


async def run_via_batch(
    job: JobSpec,
    budget: BudgetSpec,
    settings: BatchSettings,
    *,
    base_url: str,
    api_key: str | None,
    timeout: float,
    prices: PriceBook,
    simulated: bool,
    tally: Tally,
    warn: Callable[[str], None],
    on_ready: Callable[[BatchRun], None] | None = None,
) -> RunOutcome:
    """`burstq run INPUT -o OUTPUT --via batch`: the whole job, resumable by rerunning it.

    `on_ready` receives the BatchRun once it is set up (e.g. to wire signals to
    `request_stop`). Cancelling the task is safe at any instant too: the state file is
    always consistent and the rerun reattaches.
    """
    in_path, out_path = Path(job.input), Path(job.output)
    shape = job.shaping()
    if settings.output_format != "burstq":
        shape.setdefault("output_format", settings.output_format)
    fingerprint: dict[str, Any] = {
        "input": job.input,
        "shaping": shape,
        "input_sha256": file_digest(in_path),
    }
    # The simulated provider is new each run: its batches cannot be reattached to.
    state_url = "simulate" if simulated else public_url(base_url)
    client = make_client(base_url, api_key, timeout)
    try:
        return await _run(
            job,
            budget,
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


async def _run(
    job: JobSpec,
    budget_spec: BudgetSpec,
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
    if job.restart and old is not None:
        await _cancel_active(provider, old, warn)
        state_path.unlink(missing_ok=True)
        old = None
    if settings.output_format == "openai-batch":
        resume = resume_openai_batch(
            out_path,
            in_path,
            fingerprint,
            default_model=job.model,
            restart=job.restart,
            retry_failed=job.retry_failed,
        )
    else:
        resume = open_for_resume(
            out_path, fingerprint, restart=job.restart, retry_failed=job.retry_failed
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
        input=job.input,
        input_sha256=fingerprint["input_sha256"],
        base_url=state_url,
    )
    budget = (
        Budget(budget_spec.max_cost, worst_case(prices, budget_spec.budget_max_tokens, batch=True))
        if budget_spec.max_cost is not None
        else None
    )
    journal = Journal(out_path, fsync=job.fsync)
    workdir = Path(tempfile.mkdtemp(prefix="burstq-batch-"))
    try:
        run = BatchRun(
            job,
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
        if on_ready is not None:
            on_ready(run)  # Ctrl-C is the run's from here: the scan below checks for it
        src = FileSource(in_path, job.model, run.parser)
        invalid: list[InvalidLine] = []
        cancelled = threading.Event()  # the task was cancelled: the thread must not go on

        def should_stop() -> bool:
            return run.stopping or cancelled.is_set()

        try:
            # In a thread, so a signal is handled while millions of lines are read; nothing
            # else touches the run's state until supervise() starts.
            await asyncio.to_thread(src.scan, resume.done, invalid.append, should_stop)
            tally.total = src.total
            run.record_invalid(invalid)
            await asyncio.to_thread(run.plan_new, src, should_stop)
        except ScanStopped:
            return RunOutcome("interrupted", tally, run.signal)
        except asyncio.CancelledError:
            cancelled.set()  # else the loop's shutdown waits for the whole scan
            raise
        finally:
            src.close()  # shard files are written from the path, once, below
        fresh = [s for s in state.shards if s.state == "new"]
        if fresh:
            await asyncio.to_thread(run.materialize, fresh)
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


async def cancel_batches(
    output: Path, base_url: str, api_key: str | None, timeout: float, *, warn: Callable[[str], None]
) -> list[str]:
    """Cancel the running batches recorded next to OUTPUT (a `burstq batch cancel`).

    A rerun then records their requests as failed (batch_cancelled); --retry-failed redoes
    them.
    """
    state = load_state(batch_state_path(output))
    if state is None:
        return []
    client = make_client(base_url, api_key, timeout)
    try:
        return await _cancel_active(Provider(client), state, warn)
    finally:
        await client.close()
