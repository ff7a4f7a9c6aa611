"""Prompt templates: a labeling task from options or a TOML file, rows rendered into requests.

Templates are Jinja2 in a sandboxed environment with strict undefined variables: a row that
lacks a column the template uses is that row's failed record (invalid_request, naming the row
and the column), never a prompt with a silent blank. Columns are variables, `row` is the whole
row, `tojson` gives JSON (not HTML-escaped: prompts are not web pages).
May import: config, models, errors, files (reader, schema).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import RowTask
from ..errors import UsageError
from ..models import InvalidLine, Request
from .reader import make_request
from .schema import load_schema, response_format
from .shapes import Params

TASK_KEYS = {"system", "prompt", "model", "params", "schema", "id_column", "input_format"}
FORMATS = ("csv", "tsv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_UNDEFINED_RE = re.compile(r"'([^']+)' is undefined")
_NO_ATTR_RE = re.compile(r"has no attribute '([^']+)'")
# A template of plain text and bare `{{ column }}` placeholders (most labeling prompts) is
# filled without Jinja; anything else in it ({%, {#, filters, attributes, \r) goes to Jinja.
_PLAIN_RE = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
_JINJA_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})


def detect_format(input: str, given: str | None) -> str:
    if given:
        fmt = given.lower()
        if fmt == "ndjson":
            fmt = "jsonl"
        if fmt not in FORMATS:
            raise UsageError(f"--input-format must be one of {', '.join(FORMATS)}, not {given!r}")
        return fmt
    if input == "-":
        raise UsageError("INPUT is stdin: give --input-format (csv, tsv or jsonl) for data rows")
    name = input.lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise UsageError(
        f"cannot tell the format of {input} from its name: give --input-format "
        f"({', '.join(FORMATS)})"
    )


def load_task(
    input: str,
    *,
    prompt: str | None,
    system: str | None,
    template: Path | None,
    schema: str | None,
    id_column: str | None,
    input_format: str | None,
) -> tuple[RowTask | None, str | None]:
    """The row task the options describe (None: INPUT is request lines) and the template
    file's model, if it names one. Options given on the command line win over the file's."""
    spec: dict[str, Any] = {}
    if template is not None:
        spec = _read_template(template)
    for key, value in (
        ("prompt", prompt),
        ("system", system),
        ("id_column", id_column),
        ("input_format", input_format),
    ):
        if value is not None:
            spec[key] = value
    if schema is not None:
        spec["schema"] = schema
    if "prompt" not in spec:
        if spec:
            given = "the template file" if template is not None else "--system/--schema"
            raise UsageError(f"{given} needs a prompt: give --prompt or 'prompt' in the file")
        return None, None
    prompt_text = spec["prompt"]
    if not isinstance(prompt_text, str) or not prompt_text.strip():
        raise UsageError("the prompt template is empty")
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise UsageError("template params must be a table of API parameters")
    try:
        Params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"template params.{loc}: {first['msg']}") from exc
    raw_schema = spec.get("schema")
    parsed_schema: dict[str, Any] | None = None
    if isinstance(raw_schema, dict):
        from .schema import check_schema

        check_schema(raw_schema)
        parsed_schema = raw_schema
    elif isinstance(raw_schema, str):
        parsed_schema = load_schema(raw_schema)
    elif raw_schema is not None:
        raise UsageError("schema must be a field list, a JSON Schema or a file holding one")
    if parsed_schema is not None:
        response_format(parsed_schema)  # refuses a schema strict mode cannot take, now
        if "response_format" in params:
            raise UsageError("give either a schema or params.response_format, not both")
    model = spec.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise UsageError("template model must be a non-empty string")
    task = RowTask(
        input_format=detect_format(input, spec.get("input_format")),
        prompt=prompt_text,
        system=spec.get("system"),
        params=params,
        schema=parsed_schema,
        id_column=spec.get("id_column"),
        model=model,
    )
    Renderer(task, "m")  # compile now: a template error is a usage error before anything runs
    return task, model


def _read_template(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - TASK_KEYS)
    if unknown:
        raise UsageError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(TASK_KEYS))})"
        )
    for key in ("system", "prompt", "id_column", "input_format"):
        if key in data and not isinstance(data[key], str):
            raise UsageError(f"{path}: {key} must be a string")
    return data


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def plain_parts(source: str) -> list[str] | None:
    """A template as [text, name, text, name, ..., text] when it is only text and bare
    `{{ name }}` placeholders, else None (Jinja renders it)."""
    parts = _PLAIN_RE.split(source)
    for i, part in enumerate(parts):
        if i % 2:
            if part in _JINJA_LITERALS:
                return None
        elif "{" in part or "}" in part or "\r" in part:
            return None
    return parts


def fill(parts: list[str], context: dict[str, Any]) -> str | None:
    """What Jinja renders for a plain template when every placeholder names a string in
    `context`; None otherwise (a missing column, a number: Jinja decides, with its errors)."""
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        value = context.get(parts[i])
        if type(value) is not str:
            return None
        out.append(value)
        out.append(parts[i + 1])
    return "".join(out)


class Renderer:
    """Turns one data row into one chat Request (or the InvalidLine saying why not)."""

    def __init__(self, task: RowTask, default_model: str) -> None:
        from jinja2 import StrictUndefined, TemplateSyntaxError
        from jinja2.sandbox import SandboxedEnvironment

        env = SandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
        )
        env.filters["tojson"] = _tojson
        env.policies["json.dumps_function"] = _tojson
        try:
            self._prompt = env.from_string(task.prompt)
            self._system = env.from_string(task.system) if task.system else None
        except TemplateSyntaxError as exc:
            which = "system" if task.system and exc.source == task.system else "prompt"
            raise UsageError(f"{which} template, line {exc.lineno}: {exc.message}") from exc
        self._plain_prompt = plain_parts(task.prompt)
        self._plain_system = plain_parts(task.system) if task.system else None
        self.task = task
        self.model = default_model  # the caller resolved --model against the file's model
        self.id_column = task.id_column
        self._params = dict(task.params)
        # One object for every row: the engine finds its validator by identity.
        self._format = response_format(task.schema) if task.schema is not None else None
        self._max_tokens = self._params.get("max_tokens") or self._params.get(
            "max_completion_tokens"
        )

    def render(self, row: dict[str, Any], line: int, rownum: int) -> Request | InvalidLine:
        rid = self._row_id(row, rownum)
        if isinstance(rid, InvalidLine):
            return InvalidLine(line, None, rid.message)
        context = {**row, "row": row}
        try:
            plain = self._plain_prompt
            text = (plain is not None and fill(plain, context)) or self._prompt.render(context)
            text = text.strip()
            system = None
            if self._system is not None:
                plain = self._plain_system
                system = (plain is not None and fill(plain, context)) or self._system.render(
                    context
                )
                system = system.strip()
        except Exception as exc:  # a template error is this row's failure, whatever it is
            return InvalidLine(line, rid, f"row {rownum}: {self._explain(exc, row)}")
        if not text:
            return InvalidLine(line, rid, f"row {rownum}: the prompt rendered empty")
        messages = [{"role": "user", "content": text}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        body: dict[str, Any] = {"messages": messages, **self._params}
        if self._format is not None:
            body["response_format"] = self._format
        return make_request(line, rid, "chat", self.model, body, 5, None)

    def _row_id(self, row: dict[str, Any], rownum: int) -> str | InvalidLine:
        col = self.id_column
        if col is None:
            value = row.get("id")
            if value is None or value == "":
                return str(rownum)
            return str(value)
        value = row.get(col)
        if value is None or value == "":
            what = "missing" if col not in row else "empty"
            return InvalidLine(0, None, f"row {rownum}: id column {col!r} is {what}")
        return str(value)

    @staticmethod
    def _explain(exc: Exception, row: dict[str, Any]) -> str:
        from jinja2 import UndefinedError
        from jinja2.exceptions import SecurityError

        msg = str(exc)
        if isinstance(exc, UndefinedError):
            m = _UNDEFINED_RE.search(msg) or _NO_ATTR_RE.search(msg)
            if m is not None:
                cols = ", ".join(list(row)[:20]) or "none"
                return f"column {m.group(1)!r} is missing (the row has: {cols})"
        if isinstance(exc, SecurityError):
            return f"template refused by the sandbox: {msg}"
        return f"template error: {type(exc).__name__}: {msg}"
