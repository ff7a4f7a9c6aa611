"""The endpoints file (`--endpoints FILE`): several deployments, each with its own key and limits.

TOML (stdlib tomllib) or YAML (optional, `pip install 'burstq[yaml]'`), validated by pydantic
at this edge into plain `EndpointSpec`s:

    [[endpoint]]
    name = "openai"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"        # where the key comes from; never the key itself
    models = ["gpt-4o-mini"]              # or "*" (the default)
    rpm = 500                             # optional: rpm, tpm, concurrency, weight
    [[endpoint]]
    name = "azure"
    base_url = "https://res.openai.azure.com/openai/v1"
    api_key_env = "AZURE_OPENAI_API_KEY"
    api_key_header = "api-key"            # Azure's header instead of Authorization: Bearer
    deployments = { "gpt-4o-mini" = "mini-eu" }   # model a request names -> name sent
    headers = { "x-team" = "ml" }         # extra headers; "${VAR}" takes a value from the env
    query = { "api-version" = "2024-10-21" }

A key written in the file is refused (such files get committed): `api_key`, or a literal value
for a header that carries credentials. Every key read is registered with redact.register().
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import redact
from ..errors import UsageError
from .spec import BREAKER_COOLDOWN, BREAKER_FAILURES
from .spec import EndpointSpec as EndpointSpec  # re-exported: callers import it from here

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# Headers that carry credentials: their value must come from the environment.
SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    base_url: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    api_key_header: str | None = Field(default=None, min_length=1)
    models: list[str] | str = "*"
    deployments: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    rpm: float | int | None = Field(default=None, gt=0)
    tpm: float | int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    weight: float | int = Field(default=1.0, gt=0)
    batch: bool | None = None
    breaker_failures: int = Field(default=BREAKER_FAILURES, ge=1)
    breaker_cooldown: float | int = Field(default=BREAKER_COOLDOWN, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("letters, digits, '.', '_' or '-', at most 64, e.g. 'azure-eu'")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str) and v != "*":
            raise ValueError('a list of model names, or "*" for every model')
        if isinstance(v, list) and (not v or not all(v)):
            raise ValueError("a non-empty list of model names")
        return v


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    endpoint: list[_Entry] = Field(min_length=1)


def _raw(path: Path) -> Any:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise UsageError(
                f"{path}: YAML endpoints files need PyYAML: pip install 'burstq[yaml]' "
                "(or write the file in TOML)"
            ) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML: {exc}") from exc
        # YAML users naturally write `endpoints:`; TOML's array of tables reads `[[endpoint]]`.
        if isinstance(data, dict) and "endpoints" in data and "endpoint" not in data:
            data["endpoint"] = data.pop("endpoints")
        return data
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc


def _refuse_written_keys(path: Path, data: Any) -> None:
    """Before validation, so the message names the real problem (not "extra field")."""
    entries = data.get("endpoint") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            continue
        label = entry.get("name") or f"#{n}"
        for key in ("api_key", "key", "token", "secret", "password"):
            if key in entry:
                redact.register(str(entry[key]))
                raise UsageError(
                    f"{path}: endpoint {label}: a key written in the file ({key} = ...) is "
                    "refused, since such files get committed; put it in an environment "
                    'variable and name it with api_key_env = "VAR"'
                )
        headers = entry.get("headers")
        if isinstance(headers, dict):
            for hname, value in headers.items():
                if str(hname).lower() in SECRET_HEADERS and not _ENV_REF.match(str(value)):
                    redact.register(str(value))
                    raise UsageError(
                        f"{path}: endpoint {label}: header {hname} written in the file is "
                        'refused; use api_key_env (and api_key_header = "api-key" for Azure), '
                        'or "${VAR}" to read the value from the environment'
                    )


def load(path: Path, environ: Mapping[str, str] | None = None) -> list[EndpointSpec]:
    """Read, validate and resolve an endpoints file; every problem is a UsageError naming it."""
    env = os.environ if environ is None else environ
    data = _raw(path)
    _refuse_written_keys(path, data)
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{path}: {where}: {first['msg']}") from None
    names: set[str] = set()
    specs = []
    for entry in parsed.endpoint:
        if entry.name in names:
            raise UsageError(f"{path}: two endpoints are named {entry.name!r}")
        names.add(entry.name)
        specs.append(_resolve(path, entry, env))
    return specs


def _resolve(path: Path, e: _Entry, env: Mapping[str, str]) -> EndpointSpec:
    key = None
    if e.api_key_env is not None:
        key = env.get(e.api_key_env)
        if not key:
            raise UsageError(
                f"{path}: endpoint {e.name}: ${e.api_key_env} is not set (api_key_env names "
                "the environment variable that holds this endpoint's key)"
            )
        redact.register(key)
    headers: dict[str, str] = {}
    for hname, value in e.headers.items():
        ref = _ENV_REF.match(value)
        if ref:
            value = env.get(ref.group(1), "")
            if not value:
                raise UsageError(
                    f"{path}: endpoint {e.name}: header {hname}: ${ref.group(1)} is not set"
                )
            redact.register(value)  # a header read from the env may well be a credential
        headers[hname] = value
    return EndpointSpec(
        name=e.name,
        base_url=e.base_url,
        api_key=key,
        api_key_header=e.api_key_header,
        models=None if e.models == "*" else frozenset(e.models),
        deployments=dict(e.deployments),
        headers=headers,
        query=dict(e.query),
        rpm=float(e.rpm) if e.rpm is not None else None,
        tpm=float(e.tpm) if e.tpm is not None else None,
        concurrency=e.concurrency,
        weight=float(e.weight),
        batch=e.batch,
        breaker_failures=e.breaker_failures,
        breaker_cooldown=float(e.breaker_cooldown),
        api_key_env=e.api_key_env,
    )


def batch_endpoint(path: Path, specs: list[EndpointSpec]) -> EndpointSpec:
    """--via batch sends the whole file through one endpoint: the one marked `batch = true`
    (or the only one). Splitting a file over several providers' Batch APIs is not done."""
    marked = [s for s in specs if s.batch]
    if not marked and len(specs) == 1 and specs[0].batch is not False:
        marked = specs
    if len(marked) != 1:
        raise UsageError(
            f"{path}: --via batch uses one endpoint; mark exactly one with batch = true "
            f"(found {len(marked)})"
        )
    spec = marked[0]
    if spec.api_key_header or spec.headers or spec.query or spec.deployments:
        raise UsageError(
            f"{path}: endpoint {spec.name}: --via batch supports plain OpenAI-compatible "
            "endpoints (a bearer key, no extra headers, query or deployment map) for now"
        )
    return spec
