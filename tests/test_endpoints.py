"""The endpoints file and the router's rules, without a network: parsing, refusals, breaker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from burstcli import redact
from burstcli.config import LimitSpec
from burstcli.errors import UsageError
from burstcli.live.client import ApiClient, CallError
from burstcli.live.endpoints import EndpointSpec, batch_endpoint, load
from burstcli.live.router import Breaker, Endpoint, NoEndpoint, Router, endpoint_limits

GOOD = """
[[endpoint]]
name = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "KEY_A"
models = ["gpt-4o-mini"]
rpm = 500
tpm = 200000

[[endpoint]]
name = "azure"
base_url = "https://res.openai.azure.com/openai/v1"
api_key_env = "KEY_B"
api_key_header = "api-key"
deployments = { "gpt-4o-mini" = "mini-eu" }
headers = { "x-team" = "ml", "x-token" = "${TEAM_TOKEN}" }
query = { "api-version" = "2024-10-21" }
weight = 2
batch = true
"""
ENV = {"KEY_A": "sk-Gq8wLp-Tn4Xc2Jd6", "KEY_B": "az-Wm5rKv-Yb3Hs7Fe1", "TEAM_TOKEN": "tk-Pz9Nc4Ux"}


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    # These tests register made-up secrets (refused values too): keep them out of other tests.
    yield
    redact.forget_all()


def _write(tmp_path: Path, text: str, name: str = "endpoints.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_good_file_resolves_keys_from_the_environment(tmp_path: Path) -> None:
    a, b = load(_write(tmp_path, GOOD), ENV)
    assert (a.name, a.base_url, a.api_key, a.rpm, a.tpm) == (
        "openai",
        "https://api.openai.com/v1",
        ENV["KEY_A"],
        500.0,
        200000.0,
    )
    assert a.models == frozenset({"gpt-4o-mini"}) and a.serves("gpt-4o-mini")
    assert not a.serves("gpt-4o")
    assert b.models is None and b.serves("anything")  # models default to "*"
    assert b.deployments == {"gpt-4o-mini": "mini-eu"}
    assert b.headers == {"x-team": "ml", "x-token": "tk-Pz9Nc4Ux"}
    assert (b.api_key_header, b.weight, b.batch) == ("api-key", 2.0, True)
    # Every key read (and header taken from the env) is hidden from everything written.
    text = f"{ENV['KEY_A']} {ENV['KEY_B']} tk-Pz9Nc4Ux"
    assert "sk-Gq8wLp" not in redact.redact(text) and "tk-Pz9Nc4Ux" not in redact.redact(text)
    with pytest.raises(UsageError, match="--via batch supports plain OpenAI-compatible"):
        batch_endpoint(tmp_path, [a, b])  # b is marked, but needs headers the batch path lacks


def test_yaml_files_work_too(tmp_path: Path) -> None:
    text = "endpoints:\n  - name: local\n    base_url: http://127.0.0.1:8000/v1\n    rpm: 60\n"
    (spec,) = load(_write(tmp_path, text, "e.yaml"), {})
    assert (spec.name, spec.rpm, spec.api_key) == ("local", 60.0, None)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            'api_key = "sk-live-abcdef123456"',
            "a key written in the file (api_key = ...) is refused",
        ),
        ('headers = { "api-key" = "abcdef123456789" }', "header api-key written in the file"),
        ('headers = { "Authorization" = "Bearer sk-x1234567" }', "header Authorization"),
        ('api_key_env = "NOT_SET_ANYWHERE"', "$NOT_SET_ANYWHERE is not set"),
        ("rpm = -5", "endpoint.0.rpm"),
        ('models = "gpt-4o"', 'or "*" for every model'),
        ("colour = 3", "endpoint.0.colour: Extra inputs are not permitted"),
    ],
)
def test_bad_files_are_refused_with_a_message_naming_the_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    path = _write(tmp_path, f'[[endpoint]]\nname = "x"\nbase_url = "http://h/v1"\n{body}\n')
    with pytest.raises(UsageError) as exc:
        load(path, {})
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "abcdef123456" not in redact.redact(str(exc.value))


def test_duplicate_names_and_bad_urls_are_refused(tmp_path: Path) -> None:
    twice = '[[endpoint]]\nname = "a"\nbase_url = "http://h/v1"\n' * 2
    with pytest.raises(UsageError, match="two endpoints are named 'a'"):
        load(_write(tmp_path, twice), {})
    with pytest.raises(UsageError, match="http:// or https://"):
        load(_write(tmp_path, '[[endpoint]]\nname = "a"\nbase_url = "h/v1"\n'), {})
    with pytest.raises(UsageError, match="not valid TOML"):
        load(_write(tmp_path, "[[endpoint]\n"), {})


def test_batch_needs_exactly_one_marked_endpoint(tmp_path: Path) -> None:
    a = EndpointSpec("a", "http://a/v1")
    b = EndpointSpec("b", "http://b/v1")
    assert batch_endpoint(tmp_path, [a]) is a
    with pytest.raises(UsageError, match="mark exactly one with batch = true"):
        batch_endpoint(tmp_path, [a, b])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_failures_in_a_row_then_lets_one_probe_through() -> None:
    clock = Clock()
    br = Breaker(3, 10.0, clock, enabled=True)
    assert not br.failure() and not br.failure()
    br.success()  # a success in between: the streak starts over
    assert not br.failure() and not br.failure()
    assert br.failure() and br.state(clock.t) == "open" and not br.allows(clock.t)
    clock.t += 10.0
    assert br.allows(clock.t)  # cool-down over: one probe may go
    br.probing = True
    assert not br.allows(clock.t)  # ...and only one
    assert br.failure() and br.state(clock.t) == "open"  # the probe failed: open again
    clock.t += 10.0
    br.probing = True
    br.success()
    assert br.state(clock.t) == "closed" and br.allows(clock.t)
    # Refused connections are definitive: one is enough.
    assert br.failure(definitive=True)


def _endpoint(
    name: str,
    clock: Clock,
    *,
    models: list[str] | None = None,
    rpm: float | None = None,
    weight: float = 1.0,
) -> Endpoint:
    spec = EndpointSpec(
        name,
        "http://127.0.0.1:9/v1",
        models=frozenset(models) if models else None,
        rpm=rpm,
        weight=weight,
    )
    limits = endpoint_limits(LimitSpec(4, True, rpm, None), clock=clock)
    limits.gate.set_limit(4)
    return Endpoint(
        spec,
        ApiClient(spec.base_url, None, timeout=1),
        limits,
        Breaker(2, 5.0, clock, enabled=True),
    )


async def test_router_prefers_room_then_weight_skips_open_and_retired_endpoints() -> None:
    clock = Clock()
    a = _endpoint("a", clock, models=["gpt-4o-mini"], rpm=600)
    b = _endpoint("b", clock, models=["gpt-4o-mini"], rpm=600, weight=2)
    c = _endpoint("c", clock, models=["gpt-4o"])
    router = Router([a, b, c], clock)
    # All can send now with an empty window: the heaviest wins the tie.
    assert await router.slot("gpt-4o-mini") is b
    # b's window now has less free room than a's: a is preferred.
    assert await router.slot("gpt-4o-mini") is a
    # An endpoint whose pacer is booked ahead (it sent recently) yields to one that can send now.
    router.release(a)
    router.release(b)
    b.limits.requests.reserve(5)
    assert await router.slot("gpt-4o-mini") is a
    router.release(a)
    clock.t += 1.0  # b's booking is in the past
    # Open breakers are skipped while another endpoint can take the model...
    err = CallError("server_error", "boom", retryable=True)
    assert router.failed(a, err) and router.failed(a, err)  # health failures, counted
    assert not a.breaker.allows(clock.t) and router.other_usable(a, "gpt-4o-mini")
    assert not router.failed(a, CallError("malformed_response", "?", retryable=True))
    assert await router.slot("gpt-4o-mini") is b
    # ...and after the cool-down one probe goes there.
    clock.t += 5.0
    b.limits.requests.reserve(50)  # b is far behind
    assert await router.slot("gpt-4o-mini") is a and a.breaker.probing
    router.answered(a)
    assert a.breaker.state(clock.t) == "closed"
    # A model only c serves goes to c; once c is retired, the model has no endpoint left.
    assert await router.slot("gpt-4o") is c
    router.retire(c, CallError("auth", "Incorrect API key provided"))
    with pytest.raises(NoEndpoint) as exc:
        await router.slot("gpt-4o")
    assert exc.value.retired and "no endpoint left for model gpt-4o" in exc.value.err.message
    # A model no endpoint ever served is a bad request (fallback models apply), not a stop.
    only = Router(
        [_endpoint("d", clock, models=["gpt-4o"]), _endpoint("e", clock, models=["x"])], clock
    )
    with pytest.raises(NoEndpoint) as none:
        await only.slot("llama")
    assert not none.value.retired and none.value.err.fallback
    assert "no endpoint serves model llama" in none.value.err.message
