"""Per-request cost in USD from token usage.

Prices come from a user override file (``--prices FILE``, TOML or JSON) first and from the
bundled genai-prices data second. genai-prices is consulted once per model name: its match
logic, tiers and batch variants are flattened into a small float-only :class:`ModelPrice` that
is cached, so pricing thousands of responses costs a dict lookup and a few multiplications
rather than a ``calc_price`` call (Decimal arithmetic plus unit-registry work) each.

What is priced: prompt tokens (cached ones at the cache-read rate) and completion tokens.
Audio/image token breakdowns are priced as text, and per-request fees, cache writes and web
searches that some providers charge are not included, because the OpenAI usage object does not
report them in a form we can price reliably.

Batch discount: when genai-prices has a ``processing=batch`` price variant for the model (it does
for OpenAI, Anthropic, Google and others) those exact rates are used; otherwise, including for
override prices, the Batch API's 50 % discount is applied as a 0.5 factor on the standard rates.
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from .genai import data_snapshot
from .genai import types as gp

__all__ = [
    "BATCH_DISCOUNT_FACTOR",
    "ModelPrice",
    "PriceBook",
    "PriceTier",
    "PricesFileError",
    "worst_case_cost",
]

_log = logging.getLogger(__name__)

#: Applied to standard rates for batch requests when genai-prices has no batch rates.
BATCH_DISCOUNT_FACTOR = 0.5

_PER_MTOK = 1_000_000
# genai-prices selects request-specific rates through this context (see ModelInfo.get_prices).
_BATCH_CONTEXT: Mapping[str, str] = {"processing": "batch"}
_OVERRIDE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
_REQUIRED_FIELDS = ("input_per_mtok", "output_per_mtok")
# Tried when neither the API URL nor genai-prices' own model matching finds a provider: burstq
# speaks the OpenAI API, and OpenAI's provider-level match rules only cover gpt-*/o*-style
# names, so e.g. "text-embedding-3-small" would otherwise go unpriced.
_FALLBACK_PROVIDER_IDS = ("openai",)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class PricesFileError(ValueError):
    """The ``--prices`` override file is missing, unparsable or has a bad entry."""


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Rates that replace the base rates once a request's prompt exceeds a token threshold.

    Mirrors genai-prices' "cliff" tiers: crossing the threshold re-prices *all* tokens of the
    request, not just those above it.
    """

    above_prompt_tokens: int
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Token prices of one model in USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    # None means cached prompt tokens cost the same as uncached ones.
    cached_input_per_mtok: float | None
    source: str  # "genai-prices" or "override:<file>"
    # Long-context tiers (e.g. Gemini/Claude above 200k prompt tokens), ascending thresholds.
    tiers: tuple[PriceTier, ...] = ()
    # Batch API rates when genai-prices lists them; None means "standard rates * 0.5".
    batch: ModelPrice | None = None

    def rates_for(self, prompt_tokens: int) -> tuple[float, float, float | None]:
        """(input, output, cached input) rates that apply to a request of this prompt size."""
        chosen: ModelPrice | PriceTier = self
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                chosen = tier
        return chosen.input_per_mtok, chosen.output_per_mtok, chosen.cached_input_per_mtok


def worst_case_cost(
    price: ModelPrice,
    prompt_tokens_upper: int,
    max_completion_tokens: int,
    *,
    batch: bool = False,
) -> float:
    """Upper bound on a request's cost, for budget reservations before it is sent.

    All prompt tokens are charged at the uncached input rate and the completion is assumed to
    use all of ``max_completion_tokens``. The highest rate of any tier the prompt could reach
    is used, so the bound holds even if the real prompt is smaller than the estimate.
    """
    rates, factor = _batch_rates(price, batch)
    input_rate = rates.input_per_mtok
    output_rate = rates.output_per_mtok
    for tier in rates.tiers:
        if prompt_tokens_upper > tier.above_prompt_tokens:
            input_rate = max(input_rate, tier.input_per_mtok)
            output_rate = max(output_rate, tier.output_per_mtok)
    prompt = max(prompt_tokens_upper, 0)
    completion = max(max_completion_tokens, 0)
    return (prompt * input_rate + completion * output_rate) / _PER_MTOK * factor


class PriceBook:
    """Resolves model names to prices (overrides, then genai-prices) and prices usage dicts."""

    def __init__(
        self,
        overrides: Path | None = None,
        *,
        provider_api_url: str | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._overrides: dict[str, ModelPrice] = (
            load_overrides(overrides) if overrides is not None else {}
        )
        self._provider_api_url = provider_api_url
        self._warn: Callable[[str], None] = warn if warn is not None else _log.warning
        # Resolved prices, misses (None) included, so each model hits genai-prices and warns once.
        self._cache: dict[str, ModelPrice | None] = {}
        # Models whose genai-prices rates depend on the time of day (DeepSeek off-peak pricing):
        # these are re-resolved on every call, which is cheap next to getting it wrong for hours.
        self._time_dependent: dict[str, tuple[gp.Provider, gp.ModelInfo]] = {}
        # Models with input but no output price in genai-prices (embeddings, moderation): a
        # completion token count for them cannot be priced, so cost() returns None then.
        self._no_output_price: set[str] = set()
        self._costs: dict[tuple[str, bool, tuple[int, int, int]], float | None] = {}

    def price(self, model: str) -> ModelPrice | None:
        """Prices for ``model``, or None (after one warning per model) when nothing is known."""
        if model in self._time_dependent:
            provider, info = self._time_dependent[model]
            return _convert(provider, info, datetime.now(tz=UTC))
        try:
            return self._cache[model]
        except KeyError:
            pass
        result = self._resolve(model)
        self._cache[model] = result
        if result is None:
            self._warn(
                f"no price known for model {model!r}; cost_usd will be null "
                "(add it with --prices FILE)"
            )
        return result

    def cost(
        self, model: str, usage: Mapping[str, Any] | None, *, batch: bool = False
    ) -> float | None:
        """USD cost of one response's ``usage``; None when usage or the model's price is unknown."""
        if usage is None:
            return None
        counts = _token_counts(usage)
        if counts is None:
            return None
        # Every answer of a run asks this: the result for the same model and counts is
        # computed once (prices that change with the time of day are looked up each time).
        key = (model, batch, counts)
        if key in self._costs:
            return self._costs[key]
        usd = self._cost(model, counts, batch)
        if model not in self._time_dependent:
            if len(self._costs) >= _COSTS_MAX:
                self._costs.clear()
            self._costs[key] = usd
        return usd

    def _cost(self, model: str, counts: tuple[int, int, int], batch: bool) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        prompt, cached, completion = counts
        if completion and model in self._no_output_price:
            return None
        rates, factor = _batch_rates(price, batch)
        input_rate, output_rate, cached_rate = rates.rates_for(prompt)
        if cached_rate is None:
            cached_rate = input_rate
        usd = (
            (prompt - cached) * input_rate + cached * cached_rate + completion * output_rate
        ) / _PER_MTOK
        # Rounding to 1e-12 USD is far below any billing precision and keeps float noise such
        # as 0.00020999999999999998 out of the results file.
        return round(usd * factor, 12)

    def _resolve(self, model: str) -> ModelPrice | None:
        if (override := self._overrides.get(model)) is not None:
            return override
        found = _find_model(model, self._provider_api_url)
        if found is None:
            return None
        provider, info = found
        now = datetime.now(tz=UTC)
        price = _convert(provider, info, now)
        if price is None:
            return None
        if _is_time_dependent(info):
            self._time_dependent[model] = found
        if info.get_prices(now).output_mtok is None:
            self._no_output_price.add(model)
        return price


def load_overrides(path: Path) -> dict[str, ModelPrice]:
    """Parse a ``--prices`` TOML/JSON file into model name -> :class:`ModelPrice`."""
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise PricesFileError(f"{name}: unsupported prices file type (use .toml or .json)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PricesFileError(f"{name}: file not found") from None
    except OSError as exc:
        raise PricesFileError(f"{name}: cannot read file: {exc.strerror or exc}") from None
    try:
        data: object = tomllib.loads(raw.decode()) if suffix == ".toml" else orjson.loads(raw)
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PricesFileError(f"{name}: invalid {suffix[1:].upper()}: {exc}") from None

    if not isinstance(data, dict):
        raise PricesFileError(f"{name}: expected a table/object with a 'models' key")
    unknown = sorted(str(k) for k in data if k != "models")
    if unknown:
        raise PricesFileError(f"{name}: unknown key {unknown[0]!r} (expected only 'models')")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise PricesFileError(f"{name}: models: expected a table/object of model names")

    source = f"override:{name}"
    result: dict[str, ModelPrice] = {}
    for model, entry in models.items():
        where = f"{name}: models.{_key(model)}"
        if not isinstance(entry, dict):
            raise PricesFileError(f"{where}: expected a table/object of prices")
        for key in entry:
            if key not in _OVERRIDE_FIELDS:
                allowed = ", ".join(_OVERRIDE_FIELDS)
                raise PricesFileError(f"{where}.{_key(key)}: unknown field (allowed: {allowed})")
        for key in _REQUIRED_FIELDS:
            if key not in entry:
                raise PricesFileError(f"{where}.{key}: missing")
        cached = entry.get("cached_input_per_mtok")
        result[model] = ModelPrice(
            input_per_mtok=_number(entry["input_per_mtok"], f"{where}.input_per_mtok"),
            output_per_mtok=_number(entry["output_per_mtok"], f"{where}.output_per_mtok"),
            # JSON null is accepted and means the same as leaving the field out.
            cached_input_per_mtok=(
                None if cached is None else _number(cached, f"{where}.cached_input_per_mtok")
            ),
            source=source,
        )
    return result


def _key(name: object) -> str:
    """Render a key the way TOML would need it written, so error paths are unambiguous."""
    text = str(name)
    return text if _BARE_KEY.fullmatch(text) else orjson.dumps(text).decode()


def _number(value: object, where: str) -> float:
    # bool is an int subclass; `input_per_mtok = true` is a mistake, not a price of $1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PricesFileError(f"{where}: expected a number, got {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise PricesFileError(f"{where}: expected a finite number >= 0, got {value!r}")
    return number


def _type_name(value: object) -> str:
    if isinstance(value, str):
        return f"string {value!r}"
    return "null" if value is None else type(value).__name__


_COSTS_MAX = 65_536  # distinct (model, token counts) remembered; cleared when full


def _batch_rates(price: ModelPrice, batch: bool) -> tuple[ModelPrice, float]:
    """Rates to charge and the multiplier to apply on top of them."""
    if not batch:
        return price, 1.0
    if price.batch is not None:
        return price.batch, 1.0
    return price, BATCH_DISCOUNT_FACTOR


def _token_counts(usage: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(prompt, cached prompt, completion) tokens from an OpenAI usage object, None if absent.

    Chat/completions/embeddings use prompt_tokens/completion_tokens; the Responses API uses
    input_tokens/output_tokens. Reasoning tokens are already part of the completion count.
    """
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    if prompt is None:
        return None
    raw_completion = usage.get("completion_tokens", usage.get("output_tokens"))
    # Embeddings report no completion tokens at all; that is a count of zero, not unknown.
    completion = 0 if raw_completion is None else _count(raw_completion)
    if completion is None:
        return None
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    raw_cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if raw_cached is None:
        # DeepSeek's OpenAI-compatible API reports cache hits at the top level instead.
        raw_cached = usage.get("prompt_cache_hit_tokens")
    cached = 0 if raw_cached is None else (_count(raw_cached) or 0)
    # Cached tokens are a subset of the prompt; clamp so a buggy server can't make cost negative.
    return prompt, min(cached, prompt), completion


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _find_model(
    model: str, provider_api_url: str | None
) -> tuple[gp.Provider, gp.ModelInfo] | None:
    """Find ``model`` the way genai-prices' calc_price would, with burstq's fallbacks."""
    snapshot = data_snapshot.get_snapshot()
    if provider_api_url is not None:
        try:
            provider = snapshot.find_provider(None, None, provider_api_url)
        except LookupError:
            # Self-hosted or unknown endpoints: fall through to matching on the model name.
            pass
        else:
            if (info := provider.find_model(model, all_providers=snapshot.providers)) is not None:
                return provider, info
    attempts: list[str | None] = [None]
    if "/" in model:
        # genai-prices strips a "provider/" prefix (LiteLLM/OpenRouter style) under this id.
        attempts.append("litellm")
    attempts.extend(_FALLBACK_PROVIDER_IDS)
    for provider_id in attempts:
        try:
            return snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            continue
    return None


def _convert(provider: gp.Provider, info: gp.ModelInfo, now: datetime) -> ModelPrice | None:
    """genai-prices' rates for ``info`` at ``now`` as a ModelPrice (None: no token price)."""
    standard = _flatten(info.get_prices(now))
    if standard is None:
        return None
    batch: ModelPrice | None = None
    # Like ModelInfo.calc_price, only honour price variants when the model belongs to the provider
    # itself: a fallback provider (e.g. Azure serving OpenAI models) has its own batch pricing.
    if any(m is info for m in provider.models) and _has_active_batch_variant(info, now):
        batch = _flatten(info.get_prices(now, _BATCH_CONTEXT))
    if batch is None:
        return standard
    return ModelPrice(
        input_per_mtok=standard.input_per_mtok,
        output_per_mtok=standard.output_per_mtok,
        cached_input_per_mtok=standard.cached_input_per_mtok,
        source=standard.source,
        tiers=standard.tiers,
        batch=batch,
    )


def _has_active_batch_variant(info: gp.ModelInfo, now: datetime) -> bool:
    return any(
        dict(variant.when) == dict(_BATCH_CONTEXT)
        and (variant.constraint is None or variant.constraint.active(now))
        for variant in info.price_variants or ()
    )


def _is_time_dependent(info: gp.ModelInfo) -> bool:
    constraints: list[object] = []
    if not isinstance(info.prices, gp.ModelPrice):
        constraints.extend(cp.constraint for cp in info.prices)
    constraints.extend(v.constraint for v in info.price_variants or ())
    return any(isinstance(c, gp.TimeOfDateConstraint) for c in constraints)


def _flatten(prices: gp.ModelPrice) -> ModelPrice | None:
    inp = prices.input_mtok
    if inp is None:
        # Audio-hour, per-request or image-only pricing: nothing we can charge tokens against.
        return None
    # Embedding/moderation models have no output price; completions can't occur for them, and
    # PriceBook.cost refuses to price completion tokens for such models rather than say $0.
    out = prices.output_mtok
    cached = prices.cache_read_mtok
    thresholds = sorted(
        {t.start for p in (inp, out, cached) if isinstance(p, gp.TieredPrices) for t in p.tiers}
    )
    tiers = tuple(
        PriceTier(
            above_prompt_tokens=start,
            input_per_mtok=_rate_at(inp, start),
            output_per_mtok=_rate_at(out, start) if out is not None else 0.0,
            cached_input_per_mtok=_rate_at(cached, start) if cached is not None else None,
        )
        for start in thresholds
    )
    return ModelPrice(
        input_per_mtok=_rate_at(inp, None),
        output_per_mtok=_rate_at(out, None) if out is not None else 0.0,
        cached_input_per_mtok=_rate_at(cached, None) if cached is not None else None,
        source="genai-prices",
        tiers=tiers,
    )


def _rate_at(price: Decimal | gp.TieredPrices, threshold: int | None) -> float:
    """Rate once the prompt exceeds ``threshold`` (None: the base rate below every tier)."""
    if not isinstance(price, gp.TieredPrices):
        return float(price)
    rate = price.base
    if threshold is not None:
        # Tiers are sorted ascending; the last one starting at or below the threshold applies
        # to every prompt size above that threshold (up to the next threshold).
        for tier in price.tiers:
            if tier.start <= threshold:
                rate = tier.price
    return float(rate)
