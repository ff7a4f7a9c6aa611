"""Request lines as users write them, validated by pydantic (strict) at this edge.

Imported only when a line leaves the scan's fast path (files/reader.py: `_simple_native`) or
a template checks its params, so a run of plain lines never builds these models (their
schemas cost ~0.14 G instructions of start-up; issue 19).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..models import Endpoint


# strict: what validation accepts is exactly what is sent ("0.5" is not quietly made 0.5), so
# the dispatch pass can trust lines the scan accepted without validating them again.
class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class Params(BaseModel):
    """Known sampling parameters are type-checked; anything else passes through to the API."""

    model_config = ConfigDict(extra="allow", strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    n: int | None = Field(default=None, ge=1, le=128)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    dimensions: int | None = Field(default=None, gt=0)


class NativeLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: StrictStr | StrictInt | None = None  # strict: true must not become id "1"
    input: str | list[str] | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    priority: int = Field(default=5, ge=1, le=10)
    metadata: dict[str, Any] | None = None
    params: Params | None = None
    endpoint: Endpoint = "chat"


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    input: str | list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    custom_id: str = Field(min_length=1)
    method: Literal["POST"] = "POST"
    url: str
    body: BatchBody


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], obj: Any) -> M | str:
    """`obj` as `model`, or what is wrong with it: "field.path: message; ..." for the line."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
