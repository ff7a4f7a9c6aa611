"""Help is the manual: every command has help with an example, and docs/cli.md is its copy.

Regenerate docs/cli.md after changing options: UPDATE_DOCS=1 python -m pytest
tests/test_docs.py
"""

from __future__ import annotations

import os
from pathlib import Path

import typer.main

from burstcli.cli import app

from .conftest import run_cli

DOC = Path(__file__).parent.parent / "docs" / "cli.md"


def commands() -> list[list[str]]:
    group = typer.main.get_command(app)
    out: list[list[str]] = []
    for name, cmd in sorted(group.commands.items()):  # type: ignore[attr-defined]
        sub = getattr(cmd, "commands", None)
        if sub:
            out += [[name, s] for s in sorted(sub)]
        else:
            out.append([name])
    return out


def help_text(path: list[str]) -> str:
    res = run_cli([*path, "--help"], env={"COLUMNS": "100", "TERM": "dumb"})
    assert res.exit_code == 0
    return res.stdout


def generate() -> str:
    parts = [
        "# Command reference\n",
        "Generated from `--help` by tests/test_docs.py; do not edit by hand.\n",
    ]
    for path in commands():
        parts.append(f"## burstq {' '.join(path)}\n\n```\n{help_text(path).rstrip()}\n```\n")
    return "\n".join(parts)


def test_every_command_has_help_with_an_example() -> None:
    names = commands()
    assert ["run"] in names and ["stats"] in names and ["validate"] in names
    assert ["estimate"] in names and ["mock-server"] in names
    for path in names:
        text = help_text(path)
        assert "Example:" in text, path
        assert "burstq " + path[-1] in text or "burstq " in text


def test_docs_cli_md_matches_help() -> None:
    text = generate()
    if os.environ.get("UPDATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/cli.md is stale: regenerate it (see module doc)"


def test_readme_mentions_every_command() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for path in commands():
        assert f"burstq {' '.join(path)}" in readme, path
