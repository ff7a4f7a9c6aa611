"""What one run was asked to do, validated once, and the parts each layer takes.

The CLI builds one `RunConfig`; `run.py` hands each layer only its part: the provider to call
(`ProviderSpec`), what to read and write (`JobSpec`), the limits (`LimitSpec`), the budget
(`BudgetSpec`) and, for the live engine, the retry policy. No layer below `run.py` sees the whole
RunConfig. May import: errors, models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_WAIT = 900.0  # seconds burstq waits for something it depends on to come back


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (0-based): the input lines whose (line - 1) % count == index.

    By line number, so every process (or pod) splits one file the same way without talking
    to the others, and priorities and long lines spread evenly over the shards.
    """

    index: int
    count: int

    def owns(self, line: int) -> bool:
        return (line - 1) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] | None = None) -> Shard:
        """'I/N', or 'auto/N' with I from JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs)."""
        env = os.environ if environ is None else environ
        head, sep, tail = text.strip().partition("/")
        try:
            count = int(tail)
        except ValueError:
            count = 0
        if not sep or count < 1:
            raise UsageError(f"--shard must be I/N or auto/N (e.g. 0/4), not {text!r}")
        if head == "auto":
            raw = env.get("JOB_COMPLETION_INDEX")
            if raw is None:
                raise UsageError(
                    "--shard auto/N reads JOB_COMPLETION_INDEX (set by a Kubernetes Indexed "
                    "Job), which is not set; give the index, e.g. --shard 0/4"
                )
            head = raw.strip()
        try:
            index = int(head)
        except ValueError:
            raise UsageError(f"--shard index must be a number, not {head!r}") from None
        if not 0 <= index < count:
            raise UsageError(f"--shard {index}/{count}: the index must be 0 to {count - 1}")
        return cls(index, count)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Where requests go and how long an attempt may take."""

    base_url: str | None = None
    api_key: str | None = None
    timeout: float = 60.0
    prices: Path | None = None
    simulate: bool = False

    @property
    def url(self) -> str:
        return self.base_url or OPENAI_BASE_URL


@dataclass(frozen=True, slots=True)
class RowTask:
    """A labeling task: INPUT is data rows, each rendered into one chat request.

    Built once from --prompt/--system/--schema/--template (files/template.py resolves files
    and the schema), so what enters the resume fingerprint is the content, not a path.
    """

    input_format: str  # csv | tsv | jsonl | parquet
    prompt: str
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] | None = None  # the JSON Schema asked for (before the strict form)
    id_column: str | None = None
    model: str | None = None  # the template file's model, when it names one

    def shaping(self) -> dict[str, Any]:
        return {
            "input_format": self.input_format,
            "prompt": self.prompt,
            "system": self.system,
            "params": self.params,
            "schema": self.schema,
            # Field order, which the sidecar's sorted keys lose: export's column order.
            "fields": list((self.schema or {}).get("properties") or {}),
            "id_column": self.id_column,
        }


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to read, what to write, and what shapes the requests (the resume fingerprint)."""

    input: str  # path or "-"
    output: str  # path or "-"
    model: str = "gpt-4o-mini"
    restart: bool = False
    retry_failed: bool = False
    fsync: bool = False
    output_format: str = "burstq"  # burstq | openai-batch
    max_output_chars: int = 50_000
    stdin_window: int = 10_000
    shard: Shard | None = None
    task: RowTask | None = None  # INPUT is data rows (None: request lines)
    max_tokens: int | None = None  # --max-tokens: for chat lines that set none
    params: dict[str, Any] = field(default_factory=dict)  # --param: for chat lines without

    def shaping(self) -> dict[str, Any]:
        """Options that change what is sent: a resume with other values would mix two jobs."""
        shape: dict[str, Any] = {"model": self.model}
        if self.output_format != "burstq":
            shape["output_format"] = self.output_format
        if self.shard is not None:
            shape["shard"] = str(self.shard)  # another shard's output is another job
        if self.task is not None:
            shape["task"] = self.task.shaping()
        # Only when set, so outputs written before these options existed still resume.
        if self.max_tokens is not None:
            shape["max_tokens"] = self.max_tokens
        if self.params:
            shape["params"] = dict(sorted(self.params.items()))
        return shape

    def apply_defaults(self, body: dict[str, Any]) -> int | None:
        """Fill a chat body's unset options from --max-tokens / --param; its max_tokens."""
        for key, value in self.params.items():
            body.setdefault(key, value)
        if self.max_tokens is not None and not (
            body.get("max_tokens") or body.get("max_completion_tokens")
        ):
            body["max_tokens"] = self.max_tokens
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


@dataclass(frozen=True, slots=True)
class LimitSpec:
    concurrency: int = 50
    concurrency_given: bool = False  # the user chose it: open in full after the 1st answer
    rpm: float | None = None
    tpm: float | None = None
    limiter: str | None = None  # redis:// URL of a limiter shared with other processes
    limit_key: str | None = None  # default: base URL + salted hash of the API key
    max_wait: float = DEFAULT_MAX_WAIT


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    max_cost: float | None = None
    budget_max_tokens: int = 4096


@dataclass(slots=True)
class RunConfig:
    """Every option of `burstq run`, flat, as the command line gave them."""

    input: str  # path or "-"
    output: str  # path or "-"
    model: str = "gpt-4o-mini"
    fallback_models: list[str] = field(default_factory=list)
    concurrency: int = 50
    concurrency_given: bool = False
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 5
    timeout: float = 60.0
    base_url: str | None = None
    api_key: str | None = None
    max_cost: float | None = None
    budget_max_tokens: int = 4096
    prices: Path | None = None
    retry_failed: bool = False
    restart: bool = False
    simulate: bool = False
    quiet: bool = False
    progress: str = "auto"  # auto | rich | plain | quiet
    status_every: float = 5.0  # seconds between plain status lines
    metrics_file: Path | None = None
    pushgateway: str | None = None
    fsync: bool = False
    grace: float = 10.0
    max_output_chars: int = 50_000
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    stdin_window: int = 10_000
    via: str = "direct"  # direct | batch (the provider's Batch API)
    batch_size: int = 50_000
    completion_window: str = "24h"
    batch_poll: float | None = None  # first poll interval (default 5 s, 0.5 s simulated)
    output_format: str = "burstq"  # burstq | openai-batch
    limiter: str | None = None
    limit_key: str | None = None
    max_wait: float = DEFAULT_MAX_WAIT  # also the longest provider-requested pause waited out
    shard: Shard | None = None
    task: RowTask | None = None
    max_response_bytes: int = 32 * 1024 * 1024
    endpoints: Path | None = None  # --endpoints FILE: several deployments in one run
    dry_run: bool = False  # print what the run would keep, drop and send; send nothing
    cache: Path | None = None  # the SQLite answer cache (money/cache.py)
    cache_deterministic_only: bool = False
    max_tokens: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def provider(self) -> ProviderSpec:
        return ProviderSpec(self.base_url, self.api_key, self.timeout, self.prices, self.simulate)

    @property
    def job(self) -> JobSpec:
        return JobSpec(
            input=self.input,
            output=self.output,
            model=self.model,
            restart=self.restart,
            retry_failed=self.retry_failed,
            fsync=self.fsync,
            output_format=self.output_format,
            max_output_chars=self.max_output_chars,
            stdin_window=self.stdin_window,
            shard=self.shard,
            task=self.task,
            max_tokens=self.max_tokens,
            params=dict(self.params),
        )

    @property
    def limits(self) -> LimitSpec:
        return LimitSpec(
            self.concurrency,
            self.concurrency_given,
            self.rpm,
            self.tpm,
            self.limiter,
            self.limit_key,
            self.max_wait,
        )

    @property
    def budget(self) -> BudgetSpec:
        return BudgetSpec(self.max_cost, self.budget_max_tokens)
