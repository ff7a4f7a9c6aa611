"""The provider call: one HTTP attempt, and what its outcome means.

The hot path is a lean aiohttp client posting orjson bodies: the openai SDK adds ~10x overhead
per call (measured in bench/), which matters at thousands of requests a second, and its own
retries would hide attempts that may be billed. burstq therefore owns retries (engine.py) and
this module only classifies: every failure becomes a `CallError` whose `type` is one of

    rate_limited, timeout, connection, server_error, malformed_response, empty_response,
    bad_request, request_too_large, response_too_large, auth, insufficient_quota

with `retryable`, `fatal` (stop the whole run) and `fallback` (try the next model) decided here,
from the documented OpenAI status codes and error bodies rather than from any one server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from ..live.limits import retry_after
from ..models import ENDPOINT_PATHS
from ..redact import redact, redact_cut, register

USER_AGENT = "burstq/0.1"
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class Reply:
    data: dict[str, Any]
    headers: Mapping[str, str]


class CallError(Exception):
    def __init__(
        self,
        type: str,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        fatal: bool = False,
        fallback: bool = False,
        retry_after: float | None = None,
        maybe_billed: bool = False,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        # Redacted here, before anything stores, cuts or prints it: a provider or proxy may
        # quote our Authorization header back in its error.
        message = redact(message)
        super().__init__(message)
        self.type = type
        self.message = message
        self.status_code = status_code
        self.retryable = retryable
        self.fatal = fatal
        self.fallback = fallback
        self.retry_after = retry_after
        self.maybe_billed = maybe_billed  # sent, answer lost: the provider may charge for it
        self.headers: Mapping[str, str] = headers or {}
        self.body = body  # the provider's parsed error body, when it sent JSON
        self.unreachable = False  # could not even connect (nothing was sent)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "status_code": self.status_code}


class ApiClient:
    """POSTs to an OpenAI-compatible base URL; one instance per run, one connection pool."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        debug: bool = False,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        headers: Mapping[str, str] | None = None,
        key_header: str | None = None,
        query: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        self._headers.update(headers or {})
        if api_key:
            register(api_key)  # whoever builds a client, its key is hidden from then on
            # Azure OpenAI takes the key as `api-key: KEY`; everyone else as a bearer token.
            if key_header:
                self._headers[key_header] = api_key
            else:
                self._headers["Authorization"] = f"Bearer {api_key}"
        qs = "?" + urlencode(dict(query)) if query else ""
        self._urls = {ep: self.base_url + path + qs for ep, path in ENDPOINT_PATHS.items()}
        self._session: aiohttp.ClientSession | None = None
        self._debug = debug or os.environ.get("BURSTQ_DEBUG_HTTP") == "1"

    async def __aenter__(self) -> ApiClient:
        # limit=0: the engine's gate bounds concurrency; a second cap here would only hide it.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def redact(self, text: str) -> str:
        """Never let the key out, even if a proxy echoes our headers back in an error."""
        return redact(text)

    async def get(self, path: str) -> tuple[int, Any, Mapping[str, str]]:
        """One GET (`burstq endpoints check`): status, JSON body (None if not JSON), headers."""
        assert self._session is not None, "use `async with ApiClient(...)`"
        qs = self._urls["chat"].partition("?")[2]
        url = self.base_url + path + ("?" + qs if qs else "")
        try:
            async with self._session.get(url, timeout=self.timeout) as resp:
                raw = await resp.content.read(self.max_response_bytes)
                status, headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise CallError("timeout", f"no answer within {self.timeout.total:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise CallError("connection", self.redact(f"cannot reach {url}: {exc}")) from exc
        try:
            data = orjson.loads(self.redact(raw.decode("utf-8", "replace")))
        except orjson.JSONDecodeError:
            data = None
        return status, data, headers

    async def call(self, endpoint: str, model: str, body: dict[str, Any]) -> Reply:
        assert self._session is not None, "use `async with ApiClient(...)`"
        url = self._urls[endpoint]
        payload = orjson.dumps({"model": model, **body})
        if self._debug:
            print(
                f"burstq http > POST {url} Authorization: Bearer [REDACTED] {_dump(payload)}",
                file=sys.stderr,
            )
        try:
            async with self._session.post(url, data=payload, timeout=self.timeout) as resp:
                status, headers = resp.status, resp.headers
                raw = await self._read(resp)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise CallError(
                "timeout",
                f"no answer within {self.timeout.total:g}s",
                retryable=True,
                maybe_billed=True,
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            err = CallError(
                "connection", self.redact(f"cannot connect to {url}: {exc}"), retryable=True
            )
            err.unreachable = True
            raise err from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Reset or closed after the request left: the provider may have done (and billed) it.
            raise CallError(
                "connection",
                self.redact(f"{type(exc).__name__}: {exc}"),
                retryable=True,
                maybe_billed=True,
            ) from exc
        if self._debug:
            print(f"burstq http < {status} {_dump(raw)}", file=sys.stderr)
        if status == 200:
            return Reply(self._parse_ok(endpoint, raw, headers), headers)
        raise self._classify(status, raw, headers, model)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, up to --max-response-bytes: a provider (or a proxy gone wrong) cannot
        make a run hold hundreds of megabytes per answer."""
        cap = self.max_response_bytes
        size = resp.content_length
        if size is not None and size <= cap:
            return await resp.read()  # the common case, at full speed
        if size is None:
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                buf += chunk
                if len(buf) > cap:
                    break
            else:
                return bytes(buf)
        raise CallError(
            "response_too_large",
            f"the answer is larger than --max-response-bytes ({cap:,} bytes); not read",
            status_code=resp.status,
            maybe_billed=resp.status == 200,
        )

    async def probe(self) -> int | None:
        """GET the models list: its status, or None when nothing answered (a cheap call that
        tells a reachable endpoint that takes the key from one that does not)."""
        assert self._session is not None, "use `async with ApiClient(...)`"
        limit = aiohttp.ClientTimeout(total=min(10.0, self.timeout.total or 10.0))
        try:
            async with self._session.get(self.base_url + "/models", timeout=limit) as resp:
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    def _parse_ok(self, endpoint: str, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CallError(
                "malformed_response",
                f"invalid JSON in a 200 answer: {exc}",
                status_code=200,
                retryable=True,
                maybe_billed=True,
            ) from exc
        if not isinstance(data, dict):
            raise CallError(
                "malformed_response",
                "a 200 answer that is not a JSON object",
                status_code=200,
                retryable=True,
                maybe_billed=True,
            )
        if "error" in data and not data.get("choices") and not data.get("data"):
            msg = redact_cut(_error_message(data, raw), 500)
            raise CallError("server_error", msg, status_code=200, retryable=True)
        if endpoint == "chat":
            try:
                message = data["choices"][0]["message"]
            except (KeyError, IndexError, TypeError) as exc:
                raise CallError(
                    "malformed_response",
                    "answer has no choices[0].message",
                    status_code=200,
                    retryable=True,
                    maybe_billed=True,
                ) from exc
            if not isinstance(message, dict):
                raise CallError(
                    "malformed_response",
                    "choices[0].message is not an object",
                    status_code=200,
                    retryable=True,
                    maybe_billed=True,
                )
        else:
            items = data.get("data")
            if (
                not isinstance(items, list)
                or not items
                or not all(isinstance(i, dict) and "embedding" in i for i in items)
            ):
                raise CallError(
                    "malformed_response",
                    "answer has no data[].embedding",
                    status_code=200,
                    retryable=True,
                    maybe_billed=True,
                )
        return data

    def _classify(
        self, status: int, raw: bytes, headers: Mapping[str, str], model: str
    ) -> CallError:
        err = self._classify_status(status, raw, headers)
        err.headers = headers
        try:
            err.body = orjson.loads(self.redact(raw.decode("utf-8", "replace")))
        except orjson.JSONDecodeError:
            err.body = None
        return err

    def _classify_status(self, status: int, raw: bytes, headers: Mapping[str, str]) -> CallError:
        msg = redact_cut(_error_message(None, raw), 500)
        code, etype = _error_code(raw)
        if status in (401, 403):
            return CallError("auth", msg, status_code=status, fatal=True)
        if status == 429:
            if "insufficient_quota" in (code, etype):
                return CallError("insufficient_quota", msg, status_code=status, fatal=True)
            if msg.startswith("Request too large"):
                return CallError("request_too_large", msg, status_code=status)
            return CallError(
                "rate_limited",
                msg,
                status_code=status,
                retryable=True,
                retry_after=retry_after(headers),
                headers=headers,
            )
        if status == 404 and (code == "model_not_found" or "does not exist" in msg):
            return CallError("bad_request", msg, status_code=status, fallback=True)
        if status == 408:
            return CallError("timeout", msg, status_code=status, retryable=True, maybe_billed=True)
        if status == 409:
            return CallError("server_error", msg, status_code=status, retryable=True)
        if status == 413:
            return CallError("request_too_large", msg, status_code=status)
        if 400 <= status < 500:
            return CallError("bad_request", msg, status_code=status)
        return CallError(
            "server_error",
            msg,
            status_code=status,
            retryable=True,
            retry_after=retry_after(headers),
        )


def _error_message(data: dict[str, Any] | None, raw: bytes) -> str:
    if data is None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("message"):
            return str(data["message"])
    # Whole: the caller redacts before it cuts (a key across the cut would survive in part).
    return raw.decode("utf-8", "replace").strip() or "(empty body)"


def _error_code(raw: bytes) -> tuple[str | None, str | None]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code, etype = err.get("code"), err.get("type")
        return (str(code) if code else None), (str(etype) if etype else None)
    return None, None


def _dump(raw: bytes) -> str:
    """A debug dump of a body: redacted first, then cut."""
    return repr(redact_cut(raw.decode("utf-8", "replace"), 500))
