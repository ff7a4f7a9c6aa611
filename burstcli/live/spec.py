"""One endpoint as a run uses it (`EndpointSpec`), apart from the endpoints file it may come from.

A run without `--endpoints` builds its one spec from --base-url / --api-key; endpoints.py reads
and validates the file (pydantic, tomllib), so that work is paid only by runs that name one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BREAKER_FAILURES = 3  # consecutive connection errors / timeouts / 5xx that open the breaker
BREAKER_COOLDOWN = 15.0  # seconds an open breaker keeps the endpoint out before one probe


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint as the run uses it (the key already read from the environment)."""

    name: str | None  # None: the one endpoint built from --base-url / --api-key
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_key_header: str | None = None  # None: Authorization: Bearer KEY
    models: frozenset[str] | None = None  # None: every model
    deployments: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    query: Mapping[str, str] = field(default_factory=dict)
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None  # None: the run's --concurrency
    weight: float = 1.0
    batch: bool | None = None  # None: not said
    breaker_failures: int = BREAKER_FAILURES
    breaker_cooldown: float = BREAKER_COOLDOWN
    api_key_env: str | None = None

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models or model in self.deployments

    @property
    def label(self) -> str:
        return self.name or "default"
