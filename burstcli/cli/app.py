"""The Typer app, the one error boundary and the helpers every command shares.

Expected failures are `BurstError`s, caught once here and printed as "Error: ..." with the
documented exit code (BURSTQ_DEBUG=1 re-raises them with a traceback).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer

from ..errors import BurstError, UsageError
from ..redact import redact

# What to type, for options declared without a metavar (most have one, in options.py).
_METAVARS = {
    "prompt": "TEMPLATE",
    "system": "TEXT",
    "template": "FILE",
    "schema": "SCHEMA",
    "id_column": "COLUMN",
    "input_format": "[csv|tsv|jsonl|parquet]",
    "format": "[csv|tsv|jsonl|parquet]",
    "input": "FILE",
    "output": "FILE",
    "key": "TEXT",
    "limit_key": "NAME",
    "limiter": "URL",
    "max_response_bytes": "BYTES",
    "max_wait": "SECONDS",
    "shard": "I/N",
}


def _plain_arguments() -> None:
    """Help names what to type, not Python types: Typer shows an argument as `{input}` in
    the usage line and `input <list[Path]>` in its list, and an option without a metavar as
    `--via <str>`. Arguments have no switch for it, so their two display methods are
    replaced; an option without a metavar gets one from _METAVARS or its name."""
    from typer.core import TyperArgument, TyperOption

    original = TyperOption.display_type_rich

    def option_metavar(self: TyperOption, ctx: Any) -> str | None:
        if self.metavar is not None or self.is_flag or self.count:
            return original(self, ctx)
        name = str(self.name or "")
        return _METAVARS.get(name, name.upper().rstrip("_"))

    def arg_name(self: TyperArgument) -> str:
        name = self.metavar or str(self.name or "").upper()
        return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

    def usage_name(self: TyperArgument) -> str:
        return arg_name(self) if self.required else f"[{arg_name(self)}]"

    def no_type(self: TyperArgument, ctx: Any) -> str | None:
        return None

    if hasattr(TyperArgument, "_rich_display_name"):
        TyperArgument._rich_display_name = arg_name  # type: ignore[method-assign]
    if hasattr(TyperArgument, "_usage_display_name"):
        TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    TyperOption.display_type_rich = option_metavar  # type: ignore[method-assign]
    if hasattr(TyperArgument, "display_type_rich"):
        TyperArgument.display_type_rich = no_type  # type: ignore[method-assign,assignment]


_plain_arguments()

# Declared defaults of these types are passed through without coercion (see _lazy_coercion).
_PLAIN_DEFAULTS = (str, int, float)


def _lazy_coercion() -> None:
    """Typer coerces every parameter of the invoked command (and the group's own --help)
    through a pydantic TypeAdapter it builds on first use, even when the value is None or the
    declared default: `burstq run` built ~45 of them, and `burstq run --help` imported
    pydantic only for the group's unset --help. The coercion object here defers that build
    to a value that needs it. None still goes through Typer's own `RuntimeParam.coerce`
    (which returns None or () before looking at the type), and a declared default of a plain
    type is passed through: tests/test_startup.py checks, for every parameter of every
    command, that the real coercion returns each such default unchanged."""
    import typer.core as core

    try:
        from typer._click.core import ParameterSource
        from typer._coercion import RuntimeParam
        from typer._coercion import build_runtime_param as build
    except ImportError:  # pragma: no cover - another Typer: its own coercion applies unchanged
        return
    if getattr(core, "build_runtime_param", None) is not build:
        return  # pragma: no cover - as above

    class Deferred:
        __slots__ = ("descriptor", "annotation")

        def __init__(self, descriptor: Any) -> None:
            self.descriptor = descriptor
            self.annotation = descriptor.annotation

        coerce = RuntimeParam.coerce

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if (
                self.annotation in _PLAIN_DEFAULTS
                and type(value) is self.annotation
                and value is param.default
                and ctx.get_parameter_source(param.name) is ParameterSource.DEFAULT
            ):
                return value
            real = build(self.descriptor)
            param._runtime_param = real
            return real._coerce_value(value, param=param, ctx=ctx)

    core.build_runtime_param = Deferred  # type: ignore[attr-defined,assignment]


_lazy_coercion()

app = typer.Typer(
    name="burstq",
    help="Push files of LLM requests through OpenAI-compatible APIs as fast as the rate limits "
    "allow: resumable, exactly once, with latency, tokens and cost for every request.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def boundary(fn: Callable[..., None]) -> Callable[..., None]:
    """The one error boundary: a BurstError becomes "Error: ..." and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except BurstError as exc:
            if os.environ.get("BURSTQ_DEBUG") == "1":
                # The traceback for whoever debugs, and still the documented exit code for
                # the cron job or CI step around it.
                err(redact("".join(traceback.format_exception(exc))))
            err(f"Error: {exc}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def one_of(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse a value outside `allowed`: "--via must be direct or batch, not 'x'"."""
    if value not in allowed:
        listed = " or ".join([", ".join(allowed[:-1]), allowed[-1]]) if allowed[1:] else allowed[0]
        raise UsageError(f"{option} must be {listed}, not {value!r}")


def env(name: str) -> str:
    return f"BURSTQ_{name.upper().replace('-', '_')}"


def err(msg: str) -> None:
    """Print to stderr, through the one redaction step (a provider may echo the key)."""
    print(redact(msg), file=sys.stderr)


def console() -> Any:
    """Tables go to stderr (stdout is data); wide enough for them when it is not a TTY."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.6f}" if x < 1 else f"${x:,.2f}"
