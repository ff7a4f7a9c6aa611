"""Where each request goes: the endpoint with room, a circuit breaker per endpoint, retirement.

Every run has a Router, with one endpoint (built from --base-url / --api-key) or several (from
--endpoints FILE): the engine has one code path. Each endpoint owns its ApiClient and its own
`Limits` (pacers, ceilings learned from its own headers, 429 pause, concurrency window), built
by `endpoint_limits()` so a shared limiter can be plugged in per endpoint.

Choosing (O(endpoints), no allocation): among the endpoints that serve the model, are not
retired, whose breaker lets traffic through and whose window has a free slot, the one that can
send soonest (its pause and pacers), then the one with the largest free fraction of its window,
then the heaviest `weight`. With one endpoint the router is a pass-through to its Limits.

Breaker: `breaker_failures` consecutive health failures (connection error, timeout, 5xx) open
it; after `breaker_cooldown` seconds one probe request goes through; its success closes the
breaker, its failure opens it for another cool-down. An open breaker is a preference, never a
stall: when every endpoint serving a model is open, requests go to them anyway, under their
ordinary retries and backoff. A wrong key or an exhausted quota retires an endpoint for good.
May import: files, money, models, errors, config, redact (it is in live/).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import LimitSpec
from .client import ApiClient, CallError
from .endpoints import EndpointSpec
from .limits import Clock, Limits, LimitsSnapshot
from .shared import SharedPacer

HEALTH_ERRORS = frozenset({"connection", "timeout", "server_error"})
# Commit a request to an endpoint only if it can send within this long: a request queued behind
# one endpoint's pacer cannot be taken over by another that frees up, so deep queues leave a
# tail at the end of a run where the slower endpoint drains alone.
HORIZON = 0.1


def endpoint_limits(
    spec: LimitSpec,
    *,
    clock: Clock,
    shared: SharedPacer | None = None,
    backoff_base: float = 0.5,
    timeout: float | None = None,
) -> Limits:
    """The one place an endpoint's Limits are built (its shared --limiter budget plugs in)."""
    return Limits(
        concurrency=spec.concurrency,
        rpm=spec.rpm,
        tpm=spec.tpm,
        clock=clock,
        concurrency_given=spec.concurrency_given,
        shared=shared,
        backoff_base=backoff_base,
        timeout=timeout,
    )


class Breaker:
    """closed -> (failures in a row) open -> (cool-down) one probe -> closed or open again."""

    __slots__ = (
        "failures",
        "cooldown",
        "enabled",
        "_clock",
        "streak",
        "open_until",
        "probing",
        "opened",
    )

    def __init__(self, failures: int, cooldown: float, clock: Clock, *, enabled: bool) -> None:
        self.failures, self.cooldown, self.enabled = failures, cooldown, enabled
        self._clock = clock
        self.streak = 0
        self.open_until: float | None = None  # None: closed
        self.probing = False
        self.opened = 0

    def allows(self, now: float) -> bool:
        until = self.open_until
        return until is None or (now >= until and not self.probing)

    def state(self, now: float) -> str:
        if self.open_until is None:
            return "closed"
        if self.probing or now >= self.open_until:
            return "probing"
        return "open"

    def failure(self, *, definitive: bool = False) -> bool:
        """A health failure; True if it (re)opened the breaker just now. `definitive`: nothing
        listens there (connection refused), no point waiting for more evidence."""
        if not self.enabled:
            return False
        self.streak += 1
        if definitive:
            self.streak = max(self.streak, self.failures)
        if self.probing or (self.open_until is None and self.streak >= self.failures):
            self.probing = False
            self.open_until = self._clock() + self.cooldown
            self.opened += 1
            return True
        return False

    def success(self) -> None:
        self.streak = 0
        self.open_until = None
        self.probing = False


@dataclass(slots=True, eq=False)
class Endpoint:
    spec: EndpointSpec
    client: ApiClient
    limits: Limits
    breaker: Breaker
    retired: CallError | None = None  # the wrong key / exhausted quota that retired it
    attempts: int = 0
    errors: int = 0

    @property
    def name(self) -> str | None:
        return self.spec.name

    def sent_model(self, model: str) -> str:
        """The name this endpoint wants for `model` (an Azure deployment, say)."""
        return self.spec.deployments.get(model, model)


@dataclass(slots=True)
class EndpointState:
    """What progress, status lines and metrics show of one endpoint."""

    name: str
    state: str  # closed | open | probing | retired
    in_flight: int
    concurrency: int
    rpm_ceiling: float | None
    tpm_ceiling: float | None
    rpm: float | None
    attempts: int
    errors: int
    rate_limited: int
    open_for: float = 0.0


class NoEndpoint(Exception):
    """No endpoint is left for a model: `retired` says whether one served it before."""

    def __init__(self, model: str | None, err: CallError, *, retired: bool) -> None:
        super().__init__(err.message)
        self.model, self.err, self.retired = model, err, retired


@dataclass(slots=True)
class Router:
    endpoints: list[Endpoint]
    clock: Clock
    warn: Callable[[str], None] = lambda _msg: None
    multi: bool = False
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _soonest: float | None = None  # earliest ready_at beyond the horizon, from the last pick

    def __post_init__(self) -> None:
        # An endpoints file routes even with one entry (its models, its retirement); the one
        # endpoint of --base-url is a pass-through, so a plain run pays nothing for routing.
        self.multi = len(self.endpoints) > 1 or self.endpoints[0].spec.name is not None

    # -- slots --------------------------------------------------------------------------------
    def try_slot(self) -> Endpoint | None:
        """A free slot on the one endpoint of a plain run, taken without waiting; None when
        `slot()` must decide (several endpoints, or no room)."""
        if self.multi:
            return None
        only = self.endpoints[0]
        return only if only.limits.gate.try_acquire() else None

    async def slot(self, model: str | None = None, avoid: Endpoint | None = None) -> Endpoint:
        """A slot on the best endpoint for `model` (any model when None), waiting for room;
        `avoid` (where the request just failed) only if nothing else can take it now."""
        if not self.multi:
            only = self.endpoints[0]
            await only.limits.slot()
            return only
        # Let the requests placed just before book their pacers first: the choice reads them.
        await asyncio.sleep(0)
        while True:
            ep = self._pick(model, avoid)
            if ep is not None:
                await ep.limits.slot()  # it has room: this does not wait
                return ep
            self._room.clear()
            try:
                async with asyncio.timeout(self._next_wake()):
                    await self._room.wait()
            except TimeoutError:
                pass

    def release(self, ep: Endpoint) -> None:
        ep.limits.release()
        if self.multi:
            if ep.breaker.probing and ep.breaker.open_until is not None:
                ep.breaker.probing = False  # the probe ended without a verdict (cancelled)
            self._room.set()

    async def move(
        self, lease: list[Endpoint | None], model: str, avoid: Endpoint | None
    ) -> Endpoint:
        """Trade the slot in `lease` for one where `model` is best served now (maybe the same).

        NoEndpoint when the model's last endpoint retired (the run stops); the CallError of
        "no endpoint serves it" when none ever did (like a 404: fallback models apply), after
        taking a slot on any endpoint again so the request still holds one while it tries them.
        """
        ep = lease[0]
        assert ep is not None
        lease[0] = None
        self.release(ep)
        try:
            new = await self.slot(model, avoid)
        except NoEndpoint as exc:
            if exc.retired:
                raise
            lease[0] = await self.slot(None)
            raise exc.err from None
        lease[0] = new
        return new

    def _pick(self, model: str | None, avoid: Endpoint | None = None) -> Endpoint | None:
        now = self.clock()
        best: Endpoint | None = None
        best_key = (0.0, 0.0, 0.0)
        fallback: Endpoint | None = None  # an open one with room, if nothing else can take it
        usable = alive = avoid_ok = False
        self._soonest = None
        for ep in self.endpoints:
            if ep.retired is not None or (model is not None and not ep.spec.serves(model)):
                continue
            alive = True
            ok = ep.breaker.allows(now)
            usable = usable or ok
            gate = ep.limits.gate
            if gate.active >= gate.limit:
                continue
            if not ok:
                fallback = fallback or ep
                continue
            ready = ep.limits.ready_at()
            if ready > now + HORIZON:
                if self._soonest is None or ready < self._soonest:
                    self._soonest = ready
                continue
            if ep is avoid:
                avoid_ok = True
                continue
            key = (
                max(now, ready),
                -(gate.limit - gate.active) / gate.limit,
                -ep.spec.weight,
            )
            if best is None or key < best_key:
                best, best_key = ep, key
        if best is None and avoid_ok:
            best = avoid
        if best is not None:
            if best.breaker.open_until is not None:
                best.breaker.probing = True  # cool-down over: this request is the one probe
            return best
        if not alive:
            raise self._none(model)
        return fallback if not usable else None

    def _next_wake(self) -> float | None:
        """How long nothing can change but the clock: a cool-down ending, a pacer catching up."""
        now = self.clock()
        waits = [
            ep.breaker.open_until - now
            for ep in self.endpoints
            if ep.retired is None and ep.breaker.open_until is not None
        ]
        if self._soonest is not None:
            waits.append(self._soonest - HORIZON - now)
        return max(0.001, min(waits)) if waits else None

    def _none(self, model: str | None) -> NoEndpoint:
        served = [ep for ep in self.endpoints if model is None or ep.spec.serves(model)]
        retired = [ep for ep in served if ep.retired is not None]
        if retired:
            errs = [ep.retired for ep in retired if ep.retired is not None]
            why = "; ".join(
                f"{ep.spec.label}: {e.type}: {e.message}"
                for ep, e in zip(retired, errs, strict=True)
            )
            what = f"model {model}" if model else "any model"
            return NoEndpoint(
                model, CallError(errs[0].type, f"no endpoint left for {what} ({why})"), retired=True
            )
        return NoEndpoint(
            model,
            CallError(
                "bad_request",
                f"no endpoint serves model {model} (see the models of each endpoint)",
                fallback=True,
            ),
            retired=False,
        )

    # -- feedback from the engine -----------------------------------------------------------
    def answered(self, ep: Endpoint) -> None:
        if ep.breaker.open_until is not None:
            self.warn(f"endpoint {ep.spec.label} answers again: back in rotation")
        ep.breaker.success()
        self._room.set()

    def failed(self, ep: Endpoint, err: CallError) -> bool:
        """A retryable failure on `ep`, counted by its breaker: True if it says something
        about the endpoint's health (connection, timeout, 5xx) rather than the request."""
        ep.errors += 1
        if err.type not in HEALTH_ERRORS:
            return False
        if ep.breaker.failure(definitive=err.unreachable):
            self.warn(
                f"endpoint {ep.spec.label} out of rotation for {ep.breaker.cooldown:g}s "
                f"after {ep.breaker.streak} failures in a row ({err.type})"
            )
        return True

    def should_move(self, ep: Endpoint, model: str) -> bool:
        """Must a request holding `ep` go elsewhere for `model` before its next attempt?"""
        if ep.retired is not None or not ep.spec.serves(model):
            return True
        until = ep.breaker.open_until
        return until is not None and self.clock() < until and self.other_usable(ep, model)

    def other_usable(self, ep: Endpoint, model: str) -> bool:
        now = self.clock()
        return any(
            o is not ep and o.retired is None and o.spec.serves(model) and o.breaker.allows(now)
            for o in self.endpoints
        )

    def retire(self, ep: Endpoint, err: CallError) -> None:
        """A wrong key or an exhausted quota: every further call there would fail the same."""
        ep.errors += 1
        if ep.retired is None:
            ep.retired = err
            if self.multi:
                self.warn(f"endpoint {ep.spec.label} retired ({err.type}: {err.message})")
            self._room.set()

    # -- what observers see ------------------------------------------------------------------
    def snapshot(self) -> LimitsSnapshot:
        """The run's limits: one endpoint's as they are, several summed."""
        snaps = [ep.limits.snapshot() for ep in self.endpoints if ep.retired is None]
        if len(snaps) == 1 or not snaps:
            return snaps[0] if snaps else self.endpoints[0].limits.snapshot()

        def total(values: list[float | None]) -> float | None:
            return None if any(v is None for v in values) else sum(v or 0.0 for v in values)

        return LimitsSnapshot(
            concurrency=sum(s.concurrency for s in snaps),
            in_flight=sum(s.in_flight for s in snaps),
            rpm=total([s.rpm for s in snaps]),
            tpm=total([s.tpm for s in snaps]),
            rpm_ceiling=total([s.rpm_ceiling for s in snaps]),
            tpm_ceiling=total([s.tpm_ceiling for s in snaps]),
            rate_limited=sum(s.rate_limited for s in snaps),
            paused_for=min(s.paused_for for s in snaps),
        )

    def states(self) -> list[EndpointState]:
        now = self.clock()
        out = []
        for ep in self.endpoints:
            snap = ep.limits.snapshot()
            br = ep.breaker
            out.append(
                EndpointState(
                    name=ep.spec.label,
                    state="retired" if ep.retired is not None else br.state(now),
                    in_flight=snap.in_flight,
                    concurrency=snap.concurrency,
                    rpm_ceiling=snap.rpm_ceiling,
                    tpm_ceiling=snap.tpm_ceiling,
                    rpm=snap.rpm,
                    attempts=ep.attempts,
                    errors=ep.errors,
                    rate_limited=snap.rate_limited,
                    open_for=max(0.0, (br.open_until or now) - now),
                )
            )
        return out
