"""Batch mode's control plane: the files and batches calls, through the openai SDK.

These calls are not billed, so the SDK's own retries are fine here (except on create, where a
retried POST could make a second batch); failures become `ProviderError`s with a kind the run
acts on: fatal, transient, not_found or rejected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..redact import redact, register

if TYPE_CHECKING:
    from openai import AsyncOpenAI


class ProviderError(Exception):
    """A files/batches call that failed. `kind`: fatal (auth, quota), transient (retry),
    not_found, or rejected (a 4xx that would fail again)."""

    def __init__(
        self, kind: str, message: str, *, type: str = "bad_request", status_code: int | None = None
    ) -> None:
        message = redact(message)  # provider text: it may quote our Authorization header
        super().__init__(message)
        self.kind = kind
        self.type = type
        self.message = message
        self.status_code = status_code


def classify_exception(exc: Exception) -> ProviderError | None:
    import openai

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APIResponseValidationError):
        return _not_json(type(exc).__name__)

    if isinstance(exc, openai.APIStatusError):
        status, msg = exc.status_code, exc.message
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error") if isinstance(body.get("error"), dict) else body
        code = err.get("code") if isinstance(err, dict) else None
        if status in (401, 403):
            return ProviderError("fatal", msg, type="auth", status_code=status)
        if status == 429 and code == "insufficient_quota":
            return ProviderError("fatal", msg, type="insufficient_quota", status_code=status)
        if status == 404:
            return ProviderError("not_found", msg, status_code=status)
        if status in (408, 409, 429) or status >= 500:
            return ProviderError("transient", msg, type="server_error", status_code=status)
        return ProviderError("rejected", msg, status_code=status)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("transient", f"{type(exc).__name__}: {exc}", type="connection")
    return None


def _not_json(what: str) -> ProviderError:
    return ProviderError(
        "fatal",
        f"the Batch API answered {what} with a body that is not the JSON it documents (an "
        "HTML page? a proxy or a wrong --base-url)",
        type="malformed_response",
    )


def _as_dict(obj: Any, what: str) -> dict[str, Any]:
    """An SDK object as a dict with an id; the SDK hands back a plain str for a non-JSON body."""
    to_dict = getattr(obj, "to_dict", None)
    data = to_dict() if callable(to_dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise _not_json(what)
    return data


async def _json_call(what: str, call: Awaitable[Any]) -> dict[str, Any]:
    try:
        obj = await call
    except ValueError as exc:  # JSON declared, not sent (json.JSONDecodeError is a ValueError)
        raise _not_json(what) from exc
    return _as_dict(obj, what)


class Provider:
    """The files and batches calls burstq makes, as plain dicts. Tests patch these methods to
    kill a run between any two of them."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        with path.open("rb") as f:
            return await _json_call(
                "the upload",
                self.client.files.create(file=(filename, f, "application/jsonl"), purpose="batch"),
            )

    async def create(
        self, file_id: str, endpoint: str, window: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        # No SDK retry here: a POST whose answer was lost may have made the batch, and only a
        # look at the batch list (BatchRun._create) can tell.
        return await _json_call(
            "creating the batch",
            self.client.with_options(max_retries=0).batches.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window=window,  # type: ignore[arg-type]
                metadata=metadata,
            ),
        )

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await _json_call("polling the batch", self.client.batches.retrieve(batch_id))

    async def find(
        self, file_id: str, since: int | None, skip: Iterable[str]
    ) -> dict[str, Any] | None:
        """The batch made from `file_id` (newest first, stopping before `since`), if any."""
        skipped = set(skip)
        seen = 0
        try:
            async for batch in self.client.batches.list(limit=100):
                seen += 1
                data = _as_dict(batch, "listing batches")
                if data.get("input_file_id") == file_id and data["id"] not in skipped:
                    return data
                created = data.get("created_at")
                # A batch made from this file cannot predate the file (5 min of clock slack).
                if (
                    since is not None and isinstance(created, int) and created < since - 300
                ) or seen >= 10_000:
                    return None
        except (ValueError, AttributeError, TypeError) as exc:
            raise _not_json("listing batches") from exc
        return None

    async def download(self, file_id: str, dest: Path) -> None:
        async with self.client.files.with_streaming_response.content(file_id) as resp:
            with dest.open("wb") as f:
                async for chunk in resp.iter_bytes():
                    f.write(chunk)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await _json_call("cancelling the batch", self.client.batches.cancel(batch_id))


def make_client(base_url: str, api_key: str | None, timeout: float) -> AsyncOpenAI:
    from openai import AsyncOpenAI

    register(api_key)
    # Control-plane calls (upload, create, poll) are not billed, so the SDK's own retries are
    # fine here, unlike on the direct hot path. Uploads of 200 MB need far more than --timeout.
    return AsyncOpenAI(
        base_url=base_url, api_key=api_key or "sk-none", max_retries=2, timeout=max(timeout, 600.0)
    )
