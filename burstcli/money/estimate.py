"""`burstq estimate`: what a file will cost and how long it must take, without calling anything.

Prompt tokens are estimated as OpenAI's rate limiter counts them (characters / 4, plus a small
per-message overhead); the upper bound of the cost uses UTF-8 bytes instead, which no tokenizer
exceeds. Completion tokens: the worst case is max_tokens (or `assume_max_tokens` when a line
sets none); the typical case assumes half of that, capped at `typical_cap`, since most
completions stop well before their limit. Duration is bounded below by each ceiling given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files.reader import FileSource, Parser
from ..models import MESSAGE_OVERHEAD_TOKENS, InvalidLine, Request
from ..money.pricing import ModelPrice, PriceBook, worst_case_cost


@dataclass(slots=True)
class _ModelTotals:
    requests: int = 0
    prompt_tokens: int = 0
    prompt_upper: int = 0
    completion_worst: int = 0
    completion_typical: int = 0
    rate_tokens: int = 0  # what a TPM limiter is charged up front
    endpoints: set[str] = field(default_factory=set)


def estimate(
    path: Path,
    *,
    default_model: str,
    prices: PriceBook,
    rpm: float | None = None,
    tpm: float | None = None,
    concurrency: int | None = None,
    latency: float = 1.0,
    assume_max_tokens: int = 4096,
    typical_cap: int = 256,
    batch: bool = False,
    parser: Parser | None = None,
) -> dict[str, Any]:
    src = FileSource(path, default_model, parser)
    invalid: list[InvalidLine] = []
    src.scan(None, invalid.append)
    per: dict[str, _ModelTotals] = {}
    for req in _closing(src):
        t = per.setdefault(req.model, _ModelTotals())
        t.requests += 1
        t.endpoints.add(req.endpoint)
        t.prompt_tokens += -(-req.prompt_chars // 4) + MESSAGE_OVERHEAD_TOKENS * req.n_messages
        t.prompt_upper += req.prompt_tokens_upper
        t.rate_tokens += req.est_tokens
        worst = req.completion_tokens_upper(assume_max_tokens)
        t.completion_worst += worst
        t.completion_typical += min(worst // 2, typical_cap * int(req.body.get("n") or 1))
    models: list[dict[str, Any]] = []
    low_total = high_total = 0.0
    unpriced: list[str] = []
    for model, t in sorted(per.items()):
        price = prices.price(model)
        low = high = None
        if price is not None:
            low = _cost(price, t.prompt_tokens, t.completion_typical, batch)
            high = worst_case_cost(price, t.prompt_upper, t.completion_worst, batch=batch)
            low_total += low
            high_total += high
        else:
            unpriced.append(model)
        models.append(
            {
                "model": model,
                "requests": t.requests,
                "endpoints": sorted(t.endpoints),
                "prompt_tokens": t.prompt_tokens,
                "prompt_tokens_upper": t.prompt_upper,
                "completion_tokens_typical": t.completion_typical,
                "completion_tokens_worst": t.completion_worst,
                "cost_usd_typical": None if low is None else round(low, 8),
                "cost_usd_worst": None if high is None else round(high, 8),
                "price_source": price.source if price else None,
            }
        )
    n = sum(t.requests for t in per.values())
    rate_tokens = sum(t.rate_tokens for t in per.values())
    bounds: dict[str, float] = {}
    if rpm:
        bounds["rpm"] = n / rpm * 60
    if tpm:
        bounds["tpm"] = rate_tokens / tpm * 60
    if concurrency:
        bounds["concurrency"] = n * latency / concurrency
    binding = max(bounds, key=lambda k: bounds[k]) if bounds else None
    return {
        "file": str(path),
        "requests": n,
        "invalid": len(invalid),
        "prompt_tokens": sum(t.prompt_tokens for t in per.values()),
        "completion_tokens_typical": sum(t.completion_typical for t in per.values()),
        "completion_tokens_worst": sum(t.completion_worst for t in per.values()),
        "rate_limit_tokens": rate_tokens,
        "cost_usd_typical": None if unpriced else round(low_total, 8),
        "cost_usd_worst": None if unpriced else round(high_total, 8),
        "unpriced_models": unpriced,
        "batch_prices": batch,
        "models": models,
        "min_duration_s": round(bounds[binding], 3) if binding else None,
        "duration_bounds_s": {k: round(v, 3) for k, v in bounds.items()},
        "binding_limit": binding,
        "assumptions": {
            "latency_s": latency,
            "assume_max_tokens": assume_max_tokens,
            "typical_completion_cap": typical_cap,
        },
    }


def _cost(price: ModelPrice, prompt: int, completion: int, batch: bool) -> float:
    # The typical case: every prompt token at the uncached rate, typical completion length.
    return worst_case_cost(price, prompt, completion, batch=batch)


def _closing(src: FileSource) -> Iterator[Request]:
    """The source's requests, closing its file once they are read."""
    try:
        yield from src.requests()
    finally:
        src.close()
