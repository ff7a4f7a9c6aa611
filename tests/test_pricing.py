"""Tests for burstcli.money.pricing: costs against hand-computed genai-prices figures, overrides."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from burstcli.money import pricing
from burstcli.money.pricing import ModelPrice, PriceBook, PricesFileError, worst_case_cost

# genai-prices 0.2.x figures (USD per 1M tokens) the hand-computed numbers below rely on:
#   gpt-4o-mini            input 0.15, output 0.60, cache read 0.075; batch 0.075 / 0.30
#   gpt-4o                 input 2.50, output 10.0, cache read 1.25;  batch 1.25 / 5.00
#   text-embedding-3-small input 0.02 (no output price, no batch variant)


class Warnings:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture
def warns() -> Warnings:
    return Warnings()


@pytest.fixture
def book(warns: Warnings) -> PriceBook:
    return PriceBook(warn=warns)


def chat_usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    return usage


# --- genai-prices lookups -------------------------------------------------------------------


def test_gpt_4o_mini_price_and_cost(book: PriceBook) -> None:
    price = book.price("gpt-4o-mini")
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (0.15, 0.6)
    assert price.cached_input_per_mtok == 0.075
    assert price.source == "genai-prices"
    # 1000 * $0.15/M + 100 * $0.60/M = $0.00015 + $0.00006 = $0.00021
    assert book.cost("gpt-4o-mini", chat_usage(1000, 100)) == pytest.approx(0.00021)


def test_dated_model_name_resolves_like_genai_prices(book: PriceBook) -> None:
    assert book.price("gpt-4o-mini-2024-07-18") == book.price("gpt-4o-mini")
    # 1000 * $0.15/M + 100 * $0.60/M = $0.00021
    assert book.cost("gpt-4o-mini-2024-07-18", chat_usage(1000, 100)) == pytest.approx(0.00021)


def test_gpt_4o_cost(book: PriceBook) -> None:
    # 2000 * $2.50/M + 500 * $10/M = $0.005 + $0.005 = $0.01
    assert book.cost("gpt-4o", chat_usage(2000, 500)) == pytest.approx(0.01)


def test_embedding_usage_without_completion_tokens(book: PriceBook) -> None:
    usage = {"prompt_tokens": 10_000, "total_tokens": 10_000}
    # 10_000 * $0.02/M = $0.0002
    assert book.cost("text-embedding-3-small", usage) == pytest.approx(0.0002)


def test_completion_tokens_on_model_without_output_price_are_not_priced_as_free(
    book: PriceBook,
) -> None:
    assert book.cost("text-embedding-3-small", chat_usage(10, 5)) is None


def test_cached_tokens_are_a_subset_priced_at_cache_rate(book: PriceBook) -> None:
    # (1000 - 200) * $0.15/M + 200 * $0.075/M + 100 * $0.60/M
    #   = $0.00012 + $0.000015 + $0.00006 = $0.000195
    cost = book.cost("gpt-4o-mini", chat_usage(1000, 100, cached=200))
    assert cost == pytest.approx(0.000195)
    # (2048 - 1024) * $2.50/M + 1024 * $1.25/M + 0 * $10/M = $0.00256 + $0.00128 = $0.00384
    assert book.cost("gpt-4o", chat_usage(2048, 0, cached=1024)) == pytest.approx(0.00384)


def test_reasoning_tokens_are_not_double_counted(book: PriceBook) -> None:
    usage = chat_usage(1000, 100)
    usage["completion_tokens_details"] = {"reasoning_tokens": 80, "audio_tokens": 0}
    # reasoning tokens are inside completion_tokens: still $0.00021
    assert book.cost("gpt-4o-mini", usage) == pytest.approx(0.00021)


def test_responses_api_usage_shape(book: PriceBook) -> None:
    usage = {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 200},
        "output_tokens": 100,
        "output_tokens_details": {"reasoning_tokens": 50},
    }
    assert book.cost("gpt-4o-mini", usage) == pytest.approx(0.000195)


def test_result_has_no_float_noise(book: PriceBook) -> None:
    assert repr(book.cost("gpt-4o-mini", chat_usage(1000, 100))) == "0.00021"


@pytest.mark.parametrize(
    ("model", "prompt", "cached", "completion"),
    [
        ("gpt-4o-mini", 1234, 512, 321),
        ("gpt-4o", 5000, 0, 777),
        ("claude-sonnet-4-5", 150_000, 1000, 2000),
        ("claude-sonnet-4-5", 250_000, 1000, 2000),  # above the 200k tier
        ("gemini-2.5-pro", 250_000, 0, 10),  # above the 200k tier
    ],
)
@pytest.mark.parametrize("batch", [False, True])
def test_matches_genai_prices_calc_price(
    book: PriceBook, model: str, prompt: int, cached: int, completion: int, batch: bool
) -> None:
    expected = calc_price(
        Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion),
        model,
        price_context={"processing": "batch"} if batch else None,
    ).total_price
    got = book.cost(model, chat_usage(prompt, completion, cached=cached), batch=batch)
    assert got == pytest.approx(float(expected), rel=1e-9)


def test_tiered_price_applies_to_all_tokens_above_threshold(book: PriceBook) -> None:
    price = book.price("claude-sonnet-4-5")
    assert price is not None
    assert price.tiers and price.tiers[0].above_prompt_tokens == 200_000
    # 250_000 * $6/M (tier rate for all tokens, not just those above 200k) = $1.5
    assert book.cost("claude-sonnet-4-5", chat_usage(250_000, 0)) == pytest.approx(1.5)
    # 200_000 is not above the threshold: 200_000 * $3/M = $0.6
    assert book.cost("claude-sonnet-4-5", chat_usage(200_000, 0)) == pytest.approx(0.6)


def test_provider_api_url_selects_provider(warns: Warnings) -> None:
    # Groq's model names don't match any provider by name alone.
    assert PriceBook(warn=warns).price("llama-3.3-70b-versatile") is None
    groq = PriceBook(provider_api_url="https://api.groq.com/openai/v1", warn=warns)
    price = groq.price("llama-3.3-70b-versatile")
    assert price is not None and price.source == "genai-prices"


def test_unknown_provider_url_falls_back_to_model_name(warns: Warnings) -> None:
    local = PriceBook(provider_api_url="http://127.0.0.1:8000/v1", warn=warns)
    assert local.price("gpt-4o-mini") == PriceBook().price("gpt-4o-mini")
    assert warns.messages == []


def test_time_of_day_prices_are_resolved_at_request_time() -> None:
    found = pricing._find_model("deepseek-chat", None)
    assert found is not None
    peak = pricing._convert(*found, datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    off_peak = pricing._convert(*found, datetime(2026, 1, 5, 20, 0, tzinfo=UTC))
    assert peak is not None and off_peak is not None
    assert off_peak.input_per_mtok < peak.input_per_mtok
    book = PriceBook()
    assert book.price("deepseek-chat") in (peak, off_peak)
    assert "deepseek-chat" in book._time_dependent


# --- batch ----------------------------------------------------------------------------------


def test_batch_uses_genai_prices_batch_rates(book: PriceBook) -> None:
    price = book.price("gpt-4o-mini")
    assert price is not None and price.batch is not None
    assert (price.batch.input_per_mtok, price.batch.output_per_mtok) == (0.075, 0.3)
    # batch: 800 * $0.075/M + 200 * $0.075/M (cache read) + 100 * $0.30/M
    #   = $0.00006 + $0.000015 + $0.00003 = $0.000105
    cost = book.cost("gpt-4o-mini", chat_usage(1000, 100, cached=200), batch=True)
    assert cost == pytest.approx(0.000105)
    # gpt-4o batch: 2000 * $1.25/M + 500 * $5/M = $0.0025 + $0.0025 = $0.005
    assert book.cost("gpt-4o", chat_usage(2000, 500), batch=True) == pytest.approx(0.005)


def test_batch_without_genai_batch_rates_halves_the_cost(book: PriceBook) -> None:
    price = book.price("text-embedding-3-small")
    assert price is not None and price.batch is None
    # 10_000 * $0.02/M * 0.5 = $0.0001
    cost = book.cost("text-embedding-3-small", {"prompt_tokens": 10_000}, batch=True)
    assert cost == pytest.approx(0.0001)


# --- unknown models and missing usage -------------------------------------------------------


def test_unknown_model_returns_none_and_warns_once(book: PriceBook, warns: Warnings) -> None:
    assert book.price("my-llama") is None
    assert book.cost("my-llama", chat_usage(10, 10)) is None
    assert book.cost("my-llama", chat_usage(10, 10), batch=True) is None
    assert warns.messages == [
        "no price known for model 'my-llama'; cost_usd will be null (add it with --prices FILE)"
    ]


def test_default_warn_goes_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="burstcli.money.pricing"):
        assert PriceBook().cost("my-llama", chat_usage(1, 1)) is None
    assert "no price known for model 'my-llama'" in caplog.text


def test_usage_none_or_empty_returns_none(book: PriceBook) -> None:
    assert book.cost("gpt-4o-mini", None) is None
    assert book.cost("gpt-4o-mini", {}) is None
    assert book.cost("gpt-4o-mini", {"prompt_tokens": "ten", "completion_tokens": 1}) is None


def test_lookups_are_cached(monkeypatch: pytest.MonkeyPatch, warns: Warnings) -> None:
    calls: list[str] = []
    real = pricing._find_model

    def counting(model: str, url: str | None) -> Any:
        calls.append(model)
        return real(model, url)

    monkeypatch.setattr(pricing, "_find_model", counting)
    book = PriceBook(warn=warns)
    for _ in range(3):
        book.cost("gpt-4o-mini", chat_usage(1, 1))
        book.cost("my-llama", chat_usage(1, 1))
    assert calls == ["gpt-4o-mini", "my-llama"]
    assert len(warns.messages) == 1


# --- worst case -----------------------------------------------------------------------------


def test_worst_case_cost(book: PriceBook) -> None:
    price = book.price("gpt-4o-mini")
    assert price is not None
    # 1000 * $0.15/M + 500 * $0.60/M = $0.00015 + $0.0003 = $0.00045
    assert worst_case_cost(price, 1000, 500) == pytest.approx(0.00045)
    # batch rates: 1000 * $0.075/M + 500 * $0.30/M = $0.000225
    assert worst_case_cost(price, 1000, 500, batch=True) == pytest.approx(0.000225)
    plain = ModelPrice(1.0, 2.0, 0.5, "override:x.toml")
    # (1000 * $1/M + 500 * $2/M) * 0.5 = $0.001
    assert worst_case_cost(plain, 1000, 500, batch=True) == pytest.approx(0.001)


def test_worst_case_cost_uses_tier_the_prompt_can_reach(book: PriceBook) -> None:
    price = book.price("claude-sonnet-4-5")
    assert price is not None
    # 300_000 * $6/M + 1000 * $22.50/M = $1.8 + $0.0225 = $1.8225
    assert worst_case_cost(price, 300_000, 1000) == pytest.approx(1.8225)
    assert worst_case_cost(price, 300_000, 1000) >= (
        book.cost("claude-sonnet-4-5", chat_usage(250_000, 1000)) or 0
    )


# --- override files -------------------------------------------------------------------------

TOML_PRICES = """\
[models."my-llama"]
input_per_mtok = 0.2
output_per_mtok = 0.6
cached_input_per_mtok = 0.1

[models."gpt-4o-mini"]
input_per_mtok = 1
output_per_mtok = 2
"""


def test_toml_overrides(tmp_path: Path, warns: Warnings) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(TOML_PRICES)
    book = PriceBook(path, warn=warns)
    assert book.price("my-llama") == ModelPrice(0.2, 0.6, 0.1, f"override:{path}")
    # 900 * $0.20/M + 100 * $0.10/M + 50 * $0.60/M = $0.00018 + $0.00001 + $0.00003 = $0.00022
    assert book.cost("my-llama", chat_usage(1000, 50, cached=100)) == pytest.approx(0.00022)
    # Overrides carry no batch rates: 0.5 * $0.00022 = $0.00011
    cost = book.cost("my-llama", chat_usage(1000, 50, cached=100), batch=True)
    assert cost == pytest.approx(0.00011)
    # Override wins over genai-prices: 1000 * $1/M + 100 * $2/M = $0.0012
    assert book.cost("gpt-4o-mini", chat_usage(1000, 100)) == pytest.approx(0.0012)
    # ...but only for the exact name; the dated alias still comes from genai-prices.
    assert book.cost("gpt-4o-mini-2024-07-18", chat_usage(1000, 100)) == pytest.approx(0.00021)
    assert warns.messages == []


def test_json_overrides(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        '{"models": {"my-llama": {"input_per_mtok": 0.2, "output_per_mtok": 0.6},'
        ' "gpt-4o": {"input_per_mtok": 1, "output_per_mtok": 3, "cached_input_per_mtok": null}}}'
    )
    book = PriceBook(path)
    price = book.price("my-llama")
    assert price == ModelPrice(0.2, 0.6, None, f"override:{path}")
    # no cached rate: cached tokens cost the input rate. 1000 * $0.20/M + 50 * $0.60/M = $0.00023
    assert book.cost("my-llama", chat_usage(1000, 50, cached=500)) == pytest.approx(0.00023)
    # 1000 * $1/M + 100 * $3/M = $0.0013
    assert book.cost("gpt-4o", chat_usage(1000, 100)) == pytest.approx(0.0013)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "prices.toml",
            '[models."my-llama"]\ninput_per_mtok = 0.2\noutput_per_mtok = "cheap"\n',
            "prices.toml: models.my-llama.output_per_mtok: expected a number",
        ),
        (
            "prices.toml",
            '[models."my-llama"]\ninput_per_mtok = 0.2\noutput_per_mtok = 0.6\noutput = 1\n',
            "prices.toml: models.my-llama.output: unknown field",
        ),
        (
            "prices.toml",
            '[models."my-llama"]\ninput_per_mtok = 0.2\n',
            "prices.toml: models.my-llama.output_per_mtok: missing",
        ),
        (
            "prices.toml",
            '[models."my-llama"]\ninput_per_mtok = true\noutput_per_mtok = 0.6\n',
            "prices.toml: models.my-llama.input_per_mtok: expected a number",
        ),
        (
            "prices.toml",
            '[models."gpt-4.1"]\ninput_per_mtok = -1\noutput_per_mtok = 0.6\n',
            'prices.toml: models."gpt-4.1".input_per_mtok: expected a finite number >= 0',
        ),
        (
            "prices.toml",
            '[model."my-llama"]\ninput_per_mtok = 0.2\noutput_per_mtok = 0.6\n',
            "prices.toml: unknown key 'model'",
        ),
        ("prices.toml", "models = [1, 2]\n", "prices.toml: models: expected a table"),
        ("prices.toml", "[models\n", "prices.toml: invalid TOML"),
        (
            "prices.json",
            '{"models": {"my-llama": {"input_per_mtok": "0.2", "output_per_mtok": 0.6}}}',
            "prices.json: models.my-llama.input_per_mtok: expected a number",
        ),
        ("prices.json", '{"models": {"my-llama": 0.2}}', "prices.json: models.my-llama: expected"),
        ("prices.json", "{not json", "prices.json: invalid JSON"),
        ("prices.yaml", "models: {}\n", "prices.yaml: unsupported prices file type"),
    ],
)
def test_bad_override_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: str, message: str
) -> None:
    # Relative path so the message starts with the name the user typed.
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(content)
    with pytest.raises(PricesFileError) as info:
        PriceBook(Path(name))
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)


def test_missing_override_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(PricesFileError, match="nope.toml: file not found"):
        PriceBook(path)
