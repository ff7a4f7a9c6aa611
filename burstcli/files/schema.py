"""Structured outputs: the field-list DSL, the strict-mode transform, local validation.

`--schema` takes a JSON Schema (inline or a file) or a concise field list in the spirit of
llm's schema DSL (`name, age int, bio: their bio, mood: one of happy/sad`). What is sent is
OpenAI's `response_format: {"type": "json_schema", ...}` with the schema made
strict-compatible; every answer is then parsed and checked locally with the `jsonschema`
package, because a server that ignores `response_format` (many OpenAI-compatible ones do)
must still yield validated answers or honest failures.
May import: errors.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..errors import UsageError

DSL_TYPES: dict[str, str] = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
}
_FIELD_RE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(\??)\s*(\w+)?\s*(?::\s*(.*))?$", re.S)
_ONE_OF_RE = re.compile(r"^one of\s+(.+)$", re.I | re.S)
MESSAGE_CAP = 300


def parse_dsl(text: str) -> dict[str, Any]:
    """The JSON Schema a field list means.

    Fields are separated by newlines when there are any, else by commas (so a description
    may hold commas in the multi-line form). Each is `name [type][: description]`; the type
    is str (default), int, float or bool; a description `one of a/b/c` makes an enum.
    `name?` marks a field the model may leave null.
    """
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    props: dict[str, Any] = {}
    required: list[str] = []
    for part in parts:
        if not part.strip():
            continue
        m = _FIELD_RE.match(part)
        if m is None:
            raise UsageError(
                f"schema: cannot read field {part.strip()!r} (expected 'name [type]"
                "[: description]')"
            )
        name, optional, typ, desc = m.group(1), m.group(2), m.group(3), m.group(4)
        if typ is not None and typ.lower() == "one" and desc is None:
            raise UsageError(f"schema: field {name!r}: write 'one of' after a colon")
        if typ is not None and typ.lower() not in DSL_TYPES:
            kinds = ", ".join(sorted({"str", "int", "float", "bool"}))
            raise UsageError(f"schema: field {name!r}: unknown type {typ!r} (use {kinds})")
        if name in props:
            raise UsageError(f"schema: field {name!r} given twice")
        prop: dict[str, Any] = {"type": DSL_TYPES[(typ or "str").lower()]}
        desc = (desc or "").strip()
        enum = _ONE_OF_RE.match(desc)
        if enum is not None:
            values = [v.strip() for v in re.split(r"[/|]", enum.group(1)) if v.strip()]
            if not values:
                raise UsageError(f"schema: field {name!r}: 'one of' needs values (a/b/c)")
            prop = {"type": "string", "enum": values}
        elif desc:
            prop["description"] = desc
        props[name] = prop
        if not optional:
            required.append(name)
    if not props:
        raise UsageError("schema: no fields given")
    return {"type": "object", "properties": props, "required": required}


def load_schema(value: str) -> dict[str, Any]:
    """A JSON Schema from `--schema`: inline JSON, a file (JSON or a field list), or a DSL."""
    text = value
    path = Path(value)
    if not value.lstrip().startswith("{") and len(value) < 4096 and _is_file(path):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read schema {value}: {exc.strerror or exc}") from exc
    if text.lstrip().startswith("{"):
        try:
            schema = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"schema: not valid JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise UsageError("schema: a JSON Schema must be an object")
        check_schema(schema)
        return schema
    return parse_dsl(text)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse a schema that is not a valid JSON Schema (at startup, not once per answer)."""
    problem = schema_problem(schema)
    if problem is not None:
        raise UsageError(f"schema: {problem}")


_CHECKED: dict[bytes, str | None] = {}


def schema_problem(schema: Any) -> str | None:
    """What makes `schema` not a JSON Schema (None: fine). Remembered per distinct schema: a
    file of a million lines usually carries one schema, and checking one costs milliseconds."""
    from jsonschema import SchemaError, validators

    if not isinstance(schema, dict):
        return "a JSON Schema must be an object"
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    if key in _CHECKED:
        return _CHECKED[key]
    problem = None
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        problem = f"not a valid JSON Schema: {_cut(exc.message)}"
    if len(_CHECKED) < 1024:
        _CHECKED[key] = problem
    return problem


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as OpenAI's strict mode accepts it: every object closed
    (`additionalProperties: false`) with every property required, the optional ones nullable.
    """
    if schema.get("type") != "object":
        raise UsageError("schema: the top level must be an object (type: object)")
    out: dict[str, Any] = _strict(copy.deepcopy(schema))
    return out


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems", "not"):
        if key in node:
            node[key] = _strict(node[key])
    for key in ("$defs", "definitions"):
        if isinstance(node.get(key), dict):
            node[key] = {k: _strict(v) for k, v in node[key].items()}
    props = node.get("properties")
    if node.get("type") == "object" or isinstance(props, dict):
        props = props if isinstance(props, dict) else {}
        required = set(node.get("required") or [])
        for name, sub in list(props.items()):
            sub = _strict(sub)
            if name not in required:
                sub = _nullable(sub)
            props[name] = sub
        node["properties"] = props
        node["required"] = list(props)
        node["additionalProperties"] = False
    return node


def _nullable(sub: Any) -> Any:
    if not isinstance(sub, dict):
        return sub
    typ = sub.get("type")
    if isinstance(typ, str):
        if typ != "null":
            sub["type"] = [typ, "null"]
    elif isinstance(typ, list):
        if "null" not in typ:
            sub["type"] = [*typ, "null"]
    else:
        return {"anyOf": [sub, {"type": "null"}]}
    if "enum" in sub and None not in sub["enum"]:
        sub["enum"] = [*sub["enum"], None]
    return sub


def response_format(schema: dict[str, Any], name: str = "output") -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": strict(schema), "strict": True},
    }


def response_format_problem(rf: Any) -> str | None:
    """What is wrong with a request line's own `response_format` at the JSON Schema level."""
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return None  # the type itself is checked with the other params
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        return "params.response_format.json_schema: must be an object with name and schema"
    name = js.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        return "params.response_format.json_schema.name: 1-64 letters, digits, _ or -"
    if "schema" not in js:
        return "params.response_format.json_schema.schema: missing"
    problem = schema_problem(js["schema"])
    if problem is not None:
        return f"params.response_format.json_schema.schema: {problem}"
    return None


class OutputProblem(Exception):
    """An answer that cannot be accepted: `kind` is the record's error type."""

    def __init__(self, kind: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable


class Validator:
    """Parses and checks the answers of requests asking for one JSON shape."""

    __slots__ = ("_check", "_quick", "json_only")

    def __init__(self, schema: dict[str, Any] | None) -> None:
        from jsonschema import validators

        self.json_only = schema is None  # json_object: any JSON object will do
        self._check = None
        self._quick = None
        if schema is not None:
            cls = validators.validator_for(schema)
            self._check = cls(schema)
            self._quick = quick_check(schema)

    def parse(self, text: str, finish_reason: str | None, max_tokens: int | None) -> Any:
        """The answer as an object, or OutputProblem saying why not."""
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if finish_reason == "length":
                raise _cut_off(max_tokens) from None
            raise OutputProblem(
                "invalid_output",
                f"the answer is not JSON ({exc}): {_cut(text, 120)!r}",
                retryable=True,
            ) from None
        if self.json_only:
            if not isinstance(value, dict):
                raise OutputProblem(
                    "invalid_output",
                    f"the answer is JSON but not an object: {_cut(text, 120)!r}",
                    retryable=True,
                )
            return value
        assert self._check is not None
        quick = self._quick
        # The common case, without building any error: a flat schema's answer checked in a
        # few dict lookups (sound: it says True only where jsonschema would), else jsonschema.
        if (quick is not None and quick(value)) or self._check.is_valid(value):
            return value
        from jsonschema.exceptions import best_match

        error = best_match(self._check.iter_errors(value))
        if error is not None:
            if finish_reason == "length":
                raise _cut_off(max_tokens)
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise OutputProblem(
                "invalid_output",
                f"the answer does not match the schema at {where}: {_cut(error.message)}",
                retryable=True,
            )
        return value


_FLAT_KEYS = frozenset(
    {"type", "properties", "required", "additionalProperties", "title", "description"}
)
_FIELD_KEYS = frozenset({"type", "enum", "title", "description"})
_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "null": (type(None),),
}


def quick_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A checker for the shape `--schema`'s field list makes (an object of scalar fields,
    maybe enums of strings, maybe nullable), or None for any other schema.

    Sound, not complete: True means jsonschema would accept the value; False means "ask
    jsonschema" (an integral float for an integer field, an enum of numbers, ...). Anything
    in the schema it does not know, `$schema` included, makes it None.
    """
    if not schema.keys() <= _FLAT_KEYS or schema.get("type") != "object":
        return None
    props, required = schema.get("properties", {}), schema.get("required", [])
    extra_ok = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) or type(extra_ok) is not bool:
        return None
    if not all(isinstance(r, str) for r in required):
        return None
    fields: list[tuple[str, frozenset[type] | None, frozenset[str] | None, bool]] = []
    for name, sub in props.items():
        if not isinstance(sub, dict) or not sub.keys() <= _FIELD_KEYS:
            return None
        kinds: frozenset[type] | None = None
        if "type" in sub:
            typ = sub["type"]
            names = [typ] if isinstance(typ, str) else typ
            if not isinstance(names, list) or not all(n in _KINDS for n in names):
                return None
            kinds = frozenset(t for n in names for t in _KINDS[n])
        strings: frozenset[str] | None = None
        none_ok = True
        if "enum" in sub:
            enum = sub["enum"]
            if not isinstance(enum, list) or not all(e is None or type(e) is str for e in enum):
                return None
            strings, none_ok = frozenset(e for e in enum if e is not None), None in enum
        fields.append((name, kinds, strings, none_ok))
    known = frozenset(props)
    need = tuple(required)

    def check(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name in need:
            if name not in value:
                return False
        if not extra_ok and not value.keys() <= known:
            return False
        for name, kinds, strings, none_ok in fields:
            if name not in value:
                continue
            v = value[name]
            if kinds is not None and type(v) not in kinds:
                return False
            if strings is not None and not (
                v in strings if type(v) is str else (v is None and none_ok)
            ):
                return False
        return True

    return check


def _cut_off(max_tokens: int | None) -> OutputProblem:
    limit = f"max_tokens={max_tokens}" if max_tokens else "the model's output limit"
    # Not retried: the same limit would cut the same answer again (and bill it again).
    return OutputProblem(
        "output_truncated",
        f"the answer was cut off at {limit} (finish_reason 'length') before its JSON was "
        "complete; raise max_tokens and rerun with --retry-failed",
        retryable=False,
    )


def _cut(text: str, n: int = MESSAGE_CAP) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class Validators:
    """One Validator per distinct `response_format` a run meets (usually one for all)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, Validator | None]] = {}
        self._by_key: dict[bytes, Validator | None] = {}

    def for_body(self, body: dict[str, Any]) -> Validator | None:
        rf = body.get("response_format")
        if not isinstance(rf, dict):
            return None
        # Rows of one task share one response_format object: found by identity, no hashing.
        hit = self._by_id.get(id(rf))
        if hit is not None and hit[0] is rf:
            return hit[1]
        key = orjson.dumps(rf, option=orjson.OPT_SORT_KEYS)
        if key not in self._by_key:
            self._by_key[key] = _validator_of(rf)
        found = self._by_key[key]
        if len(self._by_id) < 4096:
            self._by_id[id(rf)] = (rf, found)
        return found


def _validator_of(rf: dict[str, Any]) -> Validator | None:
    kind = rf.get("type")
    if kind == "json_object":
        return Validator(None)
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if isinstance(schema, dict) and schema_problem(schema) is None:
            return Validator(schema)
        return Validator(None)
    return None


def schema_fields(schema: Any) -> list[str]:
    """Top-level property names of an object schema, in order (export's label columns)."""
    if isinstance(schema, dict):
        if schema.get("type") == "json_schema":
            schema = (schema.get("json_schema") or {}).get("schema")
        props = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(props, dict):
            return [str(k) for k in props]
    return []
