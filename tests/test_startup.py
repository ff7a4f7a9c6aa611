"""Start-up (issue 19): what `burstq --help`, `burstq run --help` and a run import, and the
coercion shortcut of cli/app.py checked against the Typer coercion it bypasses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer._click.core import Context, ParameterSource
from typer._coercion import build_runtime_param
from typer.core import TyperGroup

from burstcli.cli import app
from burstcli.cli.app import _PLAIN_DEFAULTS

from .conftest import read_jsonl, run_args, run_cli, write_jsonl


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, TyperGroup):
            yield from _commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


COMMANDS = dict(_commands(typer.main.get_command(app)))
SHORTCUT = [
    (f"{name} {param.name}", cmd, param)
    for name, cmd in COMMANDS.items()
    for param in cmd.params
    if param.type_descriptor.annotation in _PLAIN_DEFAULTS
    and type(param.default) is param.type_descriptor.annotation
]


def test_the_shortcut_covers_the_defaults_of_run() -> None:
    names = {label for label, _, _ in SHORTCUT}
    assert {"run model", "run max_retries", "run timeout", "run progress"} <= names
    assert len(SHORTCUT) > 20


@pytest.mark.parametrize(("label", "cmd", "param"), SHORTCUT, ids=[s[0] for s in SHORTCUT])
def test_a_default_passed_through_is_what_typer_would_make_of_it(
    label: str, cmd: Any, param: Any
) -> None:
    ctx = Context(cmd)
    ctx.set_parameter_source(param.name, ParameterSource.DEFAULT)
    real = build_runtime_param(param.type_descriptor).coerce(param.default, param=param, ctx=ctx)
    assert type(real) is type(param.default) and real == param.default, label


def test_other_values_still_get_typer_coercion_and_its_messages() -> None:
    res = run_cli(["run", "x.jsonl", "--concurrency", "0"])
    assert res.exit_code == 2
    assert "Input should be greater than or equal to 1" in res.output
    res = run_cli(["run", "x.jsonl"], env={"BURSTQ_MAX_RETRIES": "many"})
    assert res.exit_code == 2
    assert "unable to parse string as an integer" in res.output
    # A value typed on the command line is always coerced, whatever its type.
    res = run_cli(["estimate", "missing.jsonl", "--budget-max-tokens", "0"])
    assert res.exit_code == 2 and "greater than or equal to 1" in res.output


_IMPORTED = """
import sys
sys.argv = ["burstq", *sys.argv[1:]]
from burstcli.cli import main
try:
    main()
except SystemExit:
    pass
heavy = ("pydantic", "asyncio", "aiohttp", "genai_prices", "rich", "jinja2", "jsonschema",
         "sqlite3", "redis", "openai", "httpx2", "burstcli.run", "burstcli.mock")
print(" ".join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED, *args], capture_output=True, text=True, check=True
    )
    assert out.stderr.strip() == "", out.stderr


_RUN = """
import sys
sys.argv = ["burstq", *sys.argv[1:]]
from burstcli.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = ("httpx2", "sqlite3", "jinja2", "jsonschema", "rich", "redis", "openai",
         "burstcli.files.shapes", "burstcli.files.template", "burstcli.money.cache",
         "burstcli.live.endpoints", "burstcli.mock")
print(code, " ".join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def test_a_plain_run_imports_only_what_it_uses(server: Any, tmp_path: Path) -> None:
    srv = server()
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "r1", "input": "say 1"}])
    args = run_args(srv, inp, tmp_path / "out.jsonl")
    out = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, check=True
    )
    assert out.stderr.strip().splitlines()[-1] == "0", out.stderr
    assert read_jsonl(tmp_path / "out.jsonl")[0]["status"] == "completed"


def test_a_line_off_the_fast_path_still_gets_pydantic_s_verdict(tmp_path: Path) -> None:
    from burstcli.files.reader import validate_file

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "r1", "input": "x", "priority": 0}])
    _, problems = validate_file(inp, "gpt-4o-mini")
    assert [p.message for p in problems] == ["priority: Input should be greater than or equal to 1"]


_GENAI = """
import importlib.metadata, sys
from burstcli.money.pricing import PriceBook
cost = PriceBook().cost("gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 500})
assert "httpx2" not in sys.modules and "genai_prices.update_prices" not in sys.modules
from genai_prices import Usage, __version__, calc_price
import genai_prices
real = calc_price(Usage(input_tokens=1000, output_tokens=500), "gpt-4o-mini", provider_id="openai")
assert float(real.total_price) == cost, (real.total_price, cost)
assert __version__ == importlib.metadata.version("genai_prices")
assert genai_prices.UpdatePrices.__module__ == "genai_prices.update_prices"
print("ok")
"""


def test_genai_prices_without_its_init_then_whole_on_first_use() -> None:
    out = subprocess.run([sys.executable, "-c", _GENAI], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
