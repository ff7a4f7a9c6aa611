"""Option declarations, once: names, environment variables and help agree across commands.

Every option is also readable from `BURSTQ_<NAME>` (design.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import env as _env

# Options several commands share, declared once so their names, variables and help agree.
ModelOpt = Annotated[
    str,
    typer.Option(envvar=_env("model"), metavar="MODEL", help="Model for lines that name none."),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        metavar="URL",
        envvar=[_env("base_url"), "OPENAI_BASE_URL"],
        help="OpenAI-compatible API base URL (vLLM, llama.cpp, a proxy...).",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        metavar="KEY",
        envvar=[_env("api_key"), "OPENAI_API_KEY"],
        show_default=False,
        help="API key (default: $OPENAI_API_KEY). Never written anywhere.",
    ),
]
BudgetMaxTokensOpt = Annotated[
    int,
    typer.Option(
        metavar="N",
        envvar=_env("budget_max_tokens"),
        min=1,
        help="Completion tokens reserved (for --max-cost) or assumed (by estimate) for a "
        "request without max_tokens.",
    ),
]
PricesOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        envvar=_env("prices"),
        help="TOML or JSON file of per-model prices (USD per 1M tokens) that override or "
        "add to genai-prices.",
    ),
]


# `burstq run` options.
InputArg = Annotated[
    str, typer.Argument(metavar="INPUT", help="Request file (JSONL), or '-' for stdin.")
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        envvar=_env("output"),
        help="Where records go (JSONL); '-' for stdout. Default: INPUT's name with "
        ".responses.jsonl (stdout when INPUT is '-').",
    ),
]
FallbackModelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fallback-model",
        metavar="MODEL",
        envvar=_env("fallback_model"),
        help="Tried in order after the model's retries run out or it is not found. Repeatable.",
    ),
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        envvar=_env("concurrency"),
        min=1,
        help="Most requests in flight at once: a fixed window, opened in full after the first "
        "answer. Default: up to 50, learned: ramped up under the provider's x-ratelimit "
        "headers, or, when the server sends none (vLLM, llama.cpp...), found from latency.",
    ),
]
RpmOpt = Annotated[
    float | None,
    typer.Option(
        metavar="N",
        envvar=_env("rpm"),
        min=0.001,
        help="Requests per minute, a hard ceiling spread evenly over the minute. "
        "Default: learned from the provider's x-ratelimit headers.",
    ),
]
TpmOpt = Annotated[
    float | None,
    typer.Option(
        metavar="N",
        envvar=_env("tpm"),
        min=1,
        help="Tokens per minute, a hard ceiling (estimated as prompt chars/4 + max_tokens, "
        "corrected with the real usage).",
    ),
]
MaxRetriesOpt = Annotated[
    int,
    typer.Option(
        metavar="N",
        envvar=_env("max_retries"),
        min=0,
        help="Retries per model after the first attempt (429s do not use them up).",
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(envvar=_env("timeout"), metavar="SECONDS", min=0.001, help="Seconds per attempt."),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        metavar="USD",
        envvar=_env("max_cost"),
        min=0,
        help="Budget in USD, never crossed: stop dispatching before it, exit 3; rerun "
        "with a higher cap to continue.",
    ),
]
RetryFailedOpt = Annotated[
    bool,
    typer.Option(
        envvar=_env("retry_failed"),
        help="Redo only the failed records of OUTPUT, replacing them.",
    ),
]
RestartOpt = Annotated[
    bool, typer.Option(envvar=_env("restart"), help="Discard OUTPUT and start over.")
]
SimulateOpt = Annotated[
    bool,
    typer.Option(
        envvar=_env("simulate"),
        help="Run the whole pipeline against the built-in mock server on loopback: no key, "
        "no network, no cost.",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", envvar=_env("quiet"), help="No progress and no summary."),
]
ProgressOpt = Annotated[
    str,
    typer.Option(
        metavar="[auto|rich|plain|quiet]",
        envvar=_env("progress"),
        help="auto (rich on a terminal, a status line every few seconds otherwise), rich, "
        "plain or quiet.",
    ),
]
PushgatewayOpt = Annotated[
    str | None,
    typer.Option(
        metavar="URL",
        envvar=_env("pushgateway"),
        help="Prometheus Pushgateway URL to push the run's metrics to at the end.",
    ),
]
StatusEveryOpt = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        envvar=_env("status_every"),
        min=0.01,
        help="Seconds between plain status lines (when stderr is not a terminal).",
    ),
]
MetricsFileOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        envvar=_env("metrics_file"),
        help="Prometheus text file for node_exporter's textfile collector.",
    ),
]
FsyncOpt = Annotated[
    bool,
    typer.Option(
        envvar=_env("fsync"),
        help="fsync OUTPUT after each write: survives power loss, costs a disk flush per "
        "batch of records.",
    ),
]
GraceOpt = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        envvar=_env("grace"),
        min=0,
        help="Seconds in-flight requests get to finish after Ctrl-C / SIGTERM.",
    ),
]
MaxOutputCharsOpt = Annotated[
    int,
    typer.Option(
        metavar="N",
        envvar=_env("max_output_chars"),
        min=1,
        help="Cap on each output's length (the record says 'truncated').",
    ),
]
BackoffBaseOpt = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        envvar=_env("backoff_base"),
        min=0,
        help="First retry waits up to this many seconds; doubles per retry (full jitter).",
    ),
]
ViaOpt = Annotated[
    str,
    typer.Option(
        metavar="[direct|batch]",
        envvar=_env("via"),
        help="direct (live API calls) or batch (the provider's Batch API: half price, up to "
        "24 h; resumable like everything else).",
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        metavar="N",
        envvar=_env("batch_size"),
        min=1,
        max=50_000,
        help="--via batch: most requests per batch file.",
    ),
]
CompletionWindowOpt = Annotated[
    str,
    typer.Option(
        envvar=_env("completion_window"),
        metavar="WINDOW",
        help="--via batch: the batches' window.",
    ),
]
BatchPollOpt = Annotated[
    float | None,
    typer.Option(
        metavar="SECONDS",
        envvar=_env("batch_poll"),
        min=0.01,
        help="--via batch: seconds before the first status poll (then backing off to "
        "12x, at most 60 s). Default 5.",
    ),
]
OutputFormatOpt = Annotated[
    str,
    typer.Option(
        metavar="[burstq|openai-batch]",
        envvar=_env("output_format"),
        help="burstq (records as documented) or openai-batch (the Batch API's output "
        "lines: id, custom_id, response, error).",
    ),
]
EndpointsOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=_env("endpoints"),
        help="TOML (or YAML) file of several endpoints (keys from the environment, limits, "
        "models, Azure headers): each request goes to the one with room, a failing one is "
        "taken out of rotation. Replaces --base-url/--api-key/--rpm/--tpm.",
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        envvar=_env("max_tokens"),
        min=1,
        metavar="N",
        help="max_tokens for chat lines that set none (recommended for self-hosted servers: "
        "without it a small model may generate thousands of tokens per answer).",
    ),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        envvar=_env("param"),
        metavar="KEY=VALUE",
        help="A request parameter for chat lines that set none; VALUE is JSON when it parses "
        "(temperature=0, stop='[\"\\n\"]'), else text. Repeatable.",
    ),
]
FailOnErrorRateOpt = Annotated[
    float | None,
    typer.Option(
        metavar="FRACTION",
        envvar=_env("fail_on_error_rate"),
        min=0,
        max=1,
        help="For CI: exit 1 only when more than this fraction of requests failed.",
    ),
]
MaxWaitOpt = Annotated[
    float,
    typer.Option(
        envvar=_env("max_wait"),
        min=0,
        help="Longest wait (seconds) burstq sits out: for a provider's retry-after, or for "
        "something the run depends on (the --limiter's Redis) to come back. Longer stops "
        "the run, resumably (exit 2), saying when to come back.",
    ),
]
LimiterOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("limiter"),
        help="redis://HOST:PORT/DB (or rediss://): share one rpm/tpm budget with every "
        "process naming the same Redis and --limit-key. Password in the URL or "
        "REDIS_PASSWORD.",
    ),
]
LimitKeyOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("limit_key"),
        help="Name of the shared budget in --limiter. Default: the base URL and a salted "
        "hash of the API key (never the key itself).",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("shard"),
        help="I/N: process only shard I (0-based) of N of INPUT, split by line number; "
        "auto/N takes I from JOB_COMPLETION_INDEX (Kubernetes Indexed Job). Each shard "
        "needs its own OUTPUT; join them with `burstq merge`.",
    ),
]


# Data rows (the labeling job): with --prompt or --template, INPUT is data, not request lines.
PromptOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("prompt"),
        help="Jinja2 template of the user message; INPUT is then data rows (CSV, TSV, JSONL, "
        "Parquet): columns are variables, `row` is the whole row.",
    ),
]
SystemOpt = Annotated[
    str | None,
    typer.Option(envvar=_env("system"), help="System message (a template too) for data rows."),
]
TemplateOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=_env("template"),
        help="TOML file with the task: system, prompt, model, params, schema (options given "
        "on the command line win).",
    ),
]
SchemaOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("schema"),
        help="Structured output: a JSON Schema (inline or a file) or a field list such as "
        "'label: one of a/b/c, score float'. Answers are validated locally.",
    ),
]
IdColumnOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("id_column"),
        help="Column holding each row's id [default: 'id' where there is one, else the row "
        "number].",
    ),
]
InputFormatOpt = Annotated[
    str | None,
    typer.Option(
        envvar=_env("input_format"),
        help="csv, tsv, jsonl or parquet [default: from INPUT's extension; needed for stdin].",
    ),
]
MaxResponseBytesOpt = Annotated[
    int,
    typer.Option(
        envvar=_env("max_response_bytes"),
        min=1024,
        help="Largest provider answer read, in bytes (default 32 MiB); a larger one is a "
        "failed record (response_too_large), not a memory spike.",
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        envvar=_env("dry_run"),
        help="Print what the run would keep, drop and send (an incremental rerun's plan), "
        "then exit 0: nothing is sent and no file is changed.",
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=_env("cache"),
        help="SQLite answer cache, shared by runs and processes: a request answered before "
        "(same fingerprint, same provider) is recorded from it with cached: true, no call.",
    ),
]
CacheDeterministicOnlyOpt = Annotated[
    bool,
    typer.Option(
        envvar=_env("cache_deterministic_only"),
        help="With --cache: cache only embeddings and requests with temperature 0 "
        "(default: every completed answer, sampled ones too).",
    ),
]
