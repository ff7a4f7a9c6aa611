"""`burstq endpoints check`: try each endpoint once and say what works.

One GET /models per endpoint (free): reachable, key accepted, the models the file maps to are
listed. With `tiny_request`, one chat completion of max_tokens 1 as well (costs a fraction of
a cent), since providers send their x-ratelimit-* headers on completions, not on /models.
May import: what live/ may.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .. import redact
from .client import ApiClient, CallError
from .spec import EndpointSpec


@dataclass(slots=True)
class CheckResult:
    name: str
    base_url: str
    reachable: bool = False
    key_ok: bool | None = None  # None: could not tell
    missing_models: list[str] = field(default_factory=list)
    rpm: float | None = None
    tpm: float | None = None
    limits_from: str = ""  # "file" | "headers" | ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.reachable and self.key_ok is not False and not self.missing_models

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            "ok": self.ok,
            "reachable": self.reachable,
            "key_ok": self.key_ok,
            "missing_models": self.missing_models,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "limits_from": self.limits_from or None,
            "message": self.message,
        }


def _limit(headers: Any, kind: str) -> float | None:
    raw = headers.get(f"x-ratelimit-limit-{kind}")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


async def check_one(
    spec: EndpointSpec, *, timeout: float, tiny_request: bool, model: str
) -> CheckResult:
    res = CheckResult(spec.label, spec.base_url, rpm=spec.rpm, tpm=spec.tpm)
    if spec.rpm or spec.tpm:
        res.limits_from = "file"
    client = ApiClient(
        spec.base_url,
        spec.api_key,
        timeout=timeout,
        headers=spec.headers,
        key_header=spec.api_key_header,
        query=spec.query,
    )
    async with client:
        try:
            status, data, headers = await client.get("/models")
        except CallError as err:
            res.message = redact.redact(err.message)
            return res
        res.reachable = True
        if status in (401, 403):
            res.key_ok = False
            res.message = redact.redact_cut(_message(data) or f"HTTP {status}", 300)
            return res
        if status == 200:
            res.key_ok = True
            listed = _listed(data)
            wanted = sorted({spec.deployments.get(m, m) for m in (spec.models or ())})
            wanted += sorted(set(spec.deployments.values()) - set(wanted))
            if listed is not None:
                res.missing_models = [m for m in wanted if m not in listed]
        else:
            res.message = f"GET /models answered HTTP {status}"
        _learn(res, headers)
        if tiny_request and res.key_ok is not False:
            probe = model if spec.serves(model) else next(iter(sorted(spec.models or [model])))
            body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            try:
                reply = await client.call("chat", spec.deployments.get(probe, probe), body)
                _learn(res, reply.headers)
                res.key_ok = True
            except CallError as err:
                if err.type in ("auth", "insufficient_quota"):
                    res.key_ok = False
                _learn(res, err.headers)
                res.message = redact.redact_cut(f"tiny request: {err.type}: {err.message}", 300)
    return res


def _learn(res: CheckResult, headers: Any) -> None:
    rpm, tpm = _limit(headers, "requests"), _limit(headers, "tokens")
    if rpm is not None or tpm is not None:
        res.rpm = rpm if rpm is not None else res.rpm
        res.tpm = tpm if tpm is not None else res.tpm
        res.limits_from = "headers"


def _listed(data: Any) -> set[str] | None:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return {str(i.get("id")) for i in items if isinstance(i, dict) and i.get("id")}


def _message(data: Any) -> str | None:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    return None


async def check_all(
    specs: list[EndpointSpec], *, timeout: float, tiny_request: bool, model: str
) -> list[CheckResult]:
    return list(
        await asyncio.gather(
            *(check_one(s, timeout=timeout, tiny_request=tiny_request, model=model) for s in specs)
        )
    )
