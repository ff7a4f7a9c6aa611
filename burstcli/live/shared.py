"""One requests/minute and tokens/minute budget shared by every process naming the same Redis
and limit key (`--limiter redis://...`): the provider's limit belongs to the key, not to one
process.

The state of a limit key is one Redis hash: the two GCRA theoretical arrival times (requests,
tokens), the current pace of each (lowered after a 429, recovering on success), the ceilings
(the lowest any process was told, and the ones learned from x-ratelimit headers) and the pause
a 429 imposes on everybody. One Lua script reads Redis' own clock (no skew between machines),
books a batch of reservations and applies the feedback gathered since the last call (token
debt from real usage, successes, learned ceilings, a 429), atomically, in one round trip.

Each process keeps at most one script call in flight: reservations asked for meanwhile queue
up and go together in the next call, so a busy process makes a few hundred round trips a
second, not one per request. When Redis cannot be reached nothing is sent (a process never
falls back to pacing alone, which would overrun the shared limit): waiters stay parked, the
call is retried with backoff, the status line says so, and after `max_wait` seconds the run
stops resumably (`LimiterUnavailable`).

The API key never reaches Redis: the default limit key is the base URL (without any userinfo)
and a salted hash of the key. May import: errors, redact (and redis-py, lazily).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import BurstError, UsageError
from ..redact import redact, register

KEY_PREFIX = "burstq:limit:"
_SALT = b"burstq limit key v1"  # fixed: every process must derive the same key from one API key
TTL_MS = 600_000  # a key idle for 10 minutes is forgotten (its told ceilings with it)
PROCESS_SEEN = 30.0  # a process that booked nothing for this long no longer counts as active
RETRY_FIRST, RETRY_MAX = 0.1, 2.0  # seconds between attempts to reach an unreachable Redis
CALL_TIMEOUT = 5.0  # one script call; longer than this and Redis counts as unreachable

# GCRA in Redis: the same virtual-scheduling form as limits.Pacer (start = the latest of now,
# the pause and each TAT minus the burst credit; TAT' = max(TAT, start) + cost / rate), with
# the same constants. Times are seconds on Redis' clock from a base near 2023, so a double
# keeps microseconds; replies are strings because Redis truncates Lua numbers to integers.
_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) / 1000000
local h, procs = KEYS[1], KEYS[2]
local BURST, MARGIN, BACKOFF, MINF = 0.05, 0.97, 0.85, 0.1
local f = redis.call('HMGET', h, 'ru', 'tu', 'rl', 'tl', 'rr', 'tr', 'rt', 'tt', 'pause',
  'limited', 'n', 'tok', 'm0', 'mr', 'mt', 'pr', 'pt')
local ru, tu, rl, tl = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
local rr, tr = tonumber(f[5]), tonumber(f[6])
local rt, tt = tonumber(f[7]) or now, tonumber(f[8]) or now
local pause, limited = tonumber(f[9]) or 0, tonumber(f[10]) or 0
local n, tok = tonumber(f[11]) or 0, tonumber(f[12]) or 0
local m0, mr, mt = tonumber(f[13]) or 0, tonumber(f[14]) or 0, tonumber(f[15]) or 0
local pr, pt = tonumber(f[16]) or 0, tonumber(f[17]) or 0

local function ceiling(user, learned)
  if user and (not learned or user <= learned) then return user, user end
  if learned then return learned, learned * MARGIN end
  return nil, nil
end
local function told(old, new)
  if new > 0 and (not old or new < old) then return new end
  return old
end
local function learn(old, new)
  if new > 0 then return new end
  return old
end

local rc0, rtarget0 = ceiling(ru, rl)
local tc0, ttarget0 = ceiling(tu, tl)
ru, tu = told(ru, tonumber(ARGV[2])), told(tu, tonumber(ARGV[3]))
rl, tl = learn(rl, tonumber(ARGV[4])), learn(tl, tonumber(ARGV[5]))
local rc, rtarget = ceiling(ru, rl)
local tc, ttarget = ceiling(tu, tl)
if rtarget ~= rtarget0 or not rr then rr = rtarget end
if ttarget ~= ttarget0 or not tr then tr = ttarget end

local successes = tonumber(ARGV[9])
if successes > 0 then
  if rr and rr < rtarget then rr = math.min(rtarget, rr + rtarget * 0.01 * successes) end
  if tr and tr < ttarget then tr = math.min(ttarget, tr + ttarget * 0.01 * successes) end
end
local wait = tonumber(ARGV[10])
if wait >= 0 then
  limited = limited + tonumber(ARGV[11])
  if now >= pause then  -- a fresh congestion event: slow everybody down once
    if rr then rr = math.max(rc * MINF, rr * BACKOFF) end
    if tr then tr = math.max(tc * MINF, tr * BACKOFF) end
  end
  pause = math.max(pause, now + wait)
end
local hold_r, hold_t = tonumber(ARGV[6]), tonumber(ARGV[7])
if hold_r > 0 then rt = math.max(rt, now + hold_r) end
if hold_t > 0 then tt = math.max(tt, now + hold_t) end
rt, tt = math.max(rt, pause), math.max(tt, pause)
local debt = tonumber(ARGV[8])
if debt > 0 and tr then tt = math.max(tt + debt / tr, now - BURST) end

local minute = math.floor(now / 60) * 60
if minute ~= m0 then
  if minute - m0 == 60 then pr, pt = mr, mt else pr, pt = 0, 0 end
  m0, mr, mt = minute, 0, 0
end
mt = mt + debt
local out = {}
local count = tonumber(ARGV[12])
for i = 1, count do
  local cost = tonumber(ARGV[12 + i])
  local start = math.max(now, pause)
  if rr then start = math.max(start, rt - BURST) end
  if tr then start = math.max(start, tt - BURST) end
  if rr then rt = math.max(rt, start) + 1 / rr end
  if tr then tt = math.max(tt, start) + cost / tr end
  out[#out + 1] = string.format('%.6f', start - now)
  mr, mt = mr + 1, mt + cost
  tok = tok + cost
end
n = n + count

local function put(k, v) if v then redis.call('HSET', h, k, string.format('%.6f', v)) end end
put('ru', ru) put('tu', tu) put('rl', rl) put('tl', tl) put('rr', rr) put('tr', tr)
redis.call('HSET', h, 'rt', string.format('%.6f', rt), 'tt', string.format('%.6f', tt),
  'pause', string.format('%.6f', pause), 'limited', limited, 'n', n,
  'tok', string.format('%.0f', tok), 'm0', m0, 'mr', mr, 'mt', string.format('%.0f', mt),
  'pr', pr, 'pt', string.format('%.0f', pt), 'seen', string.format('%.6f', now))
local ttl = tonumber(ARGV[13 + count])
redis.call('PEXPIRE', h, ttl)
redis.call('ZADD', procs, now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', procs, '-inf', now - 600)
redis.call('PEXPIRE', procs, ttl)
local function s(v) if v then return string.format('%.6f', v * 60) end return '' end
return {string.format('%.6f', pause - now), s(rr), s(tr), s(rc), s(tc), unpack(out)}
"""


class LimiterUnavailable(BurstError):
    """Redis could not be reached for longer than --max-wait: stop, resumably."""


def missing_redis() -> UsageError:
    return UsageError(
        "--limiter needs the redis package (a dependency of burstq): pip install redis"
    )


def display_url(url: str) -> str:
    """The Redis URL without its password, fit for status lines and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def default_limit_key(base_url: str, api_key: str | None) -> str:
    """Base URL (userinfo stripped) + a salted hash of the API key: same key, same budget."""
    parts = urlsplit(base_url.rstrip("/"))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    clean = urlunsplit((parts.scheme, host, parts.path, "", ""))
    if not api_key:
        return f"{clean}#nokey"
    digest = hmac.new(_SALT, api_key.encode(), hashlib.sha256).hexdigest()[:16]
    return f"{clean}#{digest}"


def check_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise UsageError(
            f"--limiter must be a redis://, rediss:// or unix:// URL, not {display_url(url)!r}"
        )


def connect(url: str, *, password: str | None = None) -> Any:
    """A redis.asyncio client for `url`; the password (URL or REDIS_PASSWORD) is registered
    for redaction before anything can print it."""
    check_url(url)
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:
        raise missing_redis() from exc
    parts = urlsplit(url)
    register(parts.password)
    kwargs: dict[str, Any] = {}
    if parts.password is None:
        password = password if password is not None else os.environ.get("REDIS_PASSWORD")
        if password:
            register(password)
            kwargs["password"] = password
    try:
        # Our own loop retries an unreachable Redis (visibly, up to --max-wait); redis-py's
        # silent retries underneath would only hide the outage.
        return aioredis.Redis.from_url(
            url,
            socket_timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )
    except ValueError as exc:
        raise UsageError(f"--limiter {display_url(url)}: {redact(str(exc))}") from exc


def _is_outage(exc: BaseException) -> bool:
    """Worth waiting out (connection lost, Redis loading or failing over), not a bug."""
    from redis import exceptions as rx

    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
        return False
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | asyncio.TimeoutError):
        return True
    return isinstance(exc, rx.BusyLoadingError | rx.ReadOnlyError | rx.TryAgainError)


@dataclass(slots=True)
class _Booking:
    tokens: int
    future: asyncio.Future[float]


class SharedPacer:
    """The rpm/tpm budget of one limit key in Redis, for one process.

    `reserve(tokens)` returns the loop time at which a request may be sent; the feedback
    methods (`charge`, `succeeded`, `learn`, `rate_limited`) are cheap and ride along with the
    next call. Construct one per (Redis, limit key): several endpoints each get their own.
    """

    def __init__(
        self,
        client: Any,
        key: str,
        *,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float],
        max_wait: float = 900.0,
        url: str = "redis",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.key = key
        self.url = display_url(url)
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._keys = [KEY_PREFIX + key, KEY_PREFIX + key + ":procs"]
        self._told = (rpm / 60 if rpm else 0.0, tpm / 60 if tpm else 0.0)
        self._clock = clock
        self.max_wait = max_wait
        self._warn = warn or (lambda msg: None)
        self._process = f"{socket.gethostname()}:{os.getpid()}"
        self._queue: list[_Booking] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failed: LimiterUnavailable | None = None
        self._closed = False
        # Feedback gathered since the last call.
        self._debt = 0
        self._successes = 0
        self._learned = (0.0, 0.0)
        self._hold = (0.0, 0.0)
        self._wait = -1.0
        self._limited = 0
        # What the last reply said (rates per minute; times on the local clock).
        self.rpm: float | None = None
        self.tpm: float | None = None
        self.rpm_ceiling: float | None = rpm
        self.tpm_ceiling: float | None = tpm
        self.paused_until = 0.0
        self.down_since: float | None = None
        self.calls = 0
        self.booked = 0

    # -- what Limits calls ------------------------------------------------------------------
    async def reserve(self, tokens: int) -> float:
        if self._failed is not None:
            raise LimiterUnavailable(str(self._failed))
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append(_Booking(tokens, fut))
        self._kick()
        return await fut

    def charge(self, tokens: int) -> None:
        """Real usage exceeded the estimate by `tokens`: book the debt on the shared TAT."""
        if tokens > 0:
            self._debt += tokens

    def succeeded(self) -> None:
        self._successes += 1

    def learn(self, rpm: float | None, tpm: float | None, hold: tuple[float, float]) -> None:
        """Ceilings from x-ratelimit-limit-* (per minute) and remaining-0 holds (seconds)."""
        r, t = self._learned
        self._learned = (rpm / 60 if rpm else r, tpm / 60 if tpm else t)
        self._hold = (max(self._hold[0], hold[0]), max(self._hold[1], hold[1]))
        if rpm or tpm or hold[0] or hold[1]:
            self._kick()

    def rate_limited(self, wait: float) -> None:
        """A 429 here pauses every process on the key: sent at once, not with the next call."""
        self._wait = max(self._wait, wait)
        self._limited += 1
        self._kick()

    @property
    def status(self) -> str:
        if self.down_since is not None:
            down = self._clock() - self.down_since
            return f"redis unreachable {down:.0f}s, retrying (stop after {self.max_wait:g}s)"
        return "shared"

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._wake.set()
            # Bounded: a client library that turns the cancellation of a call in flight into
            # an error of its own would leave the task looping; `_closed` ends it at its next
            # turn, and a run's end never waits on Redis longer than one call may take.
            await asyncio.wait({task}, timeout=CALL_TIMEOUT)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: nothing to report at the end of a run
        for b in self._queue:
            if not b.future.done():
                b.future.cancel()
        self._queue.clear()

    # -- the one call in flight -------------------------------------------------------------
    def _kick(self) -> None:
        self._wake.set()
        if self._closed:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _has_feedback(self) -> bool:
        return bool(self._debt or self._successes or self._wait >= 0) or any(
            self._learned + self._hold
        )

    async def _loop(self) -> None:
        delay = RETRY_FIRST
        while not self._closed:
            if not self._queue and not self._has_feedback():
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [b for b in self._queue if not b.future.done()]
            self._queue = []
            feedback = (self._debt, self._successes, self._learned, self._hold)
            wait, limited = self._wait, self._limited
            self._debt = self._successes = self._limited = 0
            self._learned, self._hold, self._wait = (0.0, 0.0), (0.0, 0.0), -1.0
            args: list[Any] = [
                self._process,
                self._told[0],
                self._told[1],
                feedback[2][0],
                feedback[2][1],
                feedback[3][0],
                feedback[3][1],
                feedback[0],
                feedback[1],
                wait,
                limited,
                len(batch),
                *[b.tokens for b in batch],
                TTL_MS,
            ]
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    reply = await self._script(keys=self._keys, args=args)
            except Exception as exc:
                if self._closed:  # closing: whoever still waits for a booking gets none
                    for b in batch:
                        b.future.cancel()
                    return
                if not _is_outage(exc):
                    self._fail(LimiterUnavailable(f"limiter {self.url}: {redact(str(exc))}"), batch)
                    return
                # Nothing was booked (or, if the reply was lost, something was booked twice:
                # slower, never faster). Put everything back and try again.
                self._queue = batch + self._queue
                self._debt += feedback[0]
                self._successes += feedback[1]
                self._learned = (
                    self._learned[0] or feedback[2][0],
                    self._learned[1] or feedback[2][1],
                )
                self._hold = (
                    max(self._hold[0], feedback[3][0]),
                    max(self._hold[1], feedback[3][1]),
                )
                self._wait, self._limited = max(self._wait, wait), self._limited + limited
                now = self._clock()
                if self.down_since is None:
                    self.down_since = now
                    self._warn(
                        f"limiter {self.url} unreachable ({redact(str(exc)) or type(exc).__name__})"
                        f"; nothing is sent until it answers (retrying for up to "
                        f"{self.max_wait:g}s, --max-wait)"
                    )
                if now - self.down_since >= self.max_wait:
                    self._fail(
                        LimiterUnavailable(
                            f"limiter {self.url} unreachable for {now - self.down_since:.0f}s "
                            f"(--max-wait {self.max_wait:g})"
                        ),
                        self._queue,
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            if self.down_since is not None:
                self._warn(f"limiter {self.url} reachable again")
                self.down_since = None
            delay = RETRY_FIRST
            self._apply(reply, batch)

    def _apply(self, reply: list[Any], batch: list[_Booking]) -> None:
        now = self._clock()
        self.calls += 1
        self.booked += len(batch)
        fields = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]

        def opt(s: str) -> float | None:
            return float(s) if s else None

        self.paused_until = max(self.paused_until, now + float(fields[0]))
        self.rpm, self.tpm = opt(fields[1]), opt(fields[2])
        rc, tc = opt(fields[3]), opt(fields[4])
        self.rpm_ceiling = round(rc, 3) if rc else None
        self.tpm_ceiling = round(tc, 3) if tc else None
        for b, wait in zip(batch, fields[5:], strict=True):
            if not b.future.done():
                b.future.set_result(now + float(wait))

    def _fail(self, exc: LimiterUnavailable, batch: list[_Booking]) -> None:
        self._failed = exc
        for b in batch + self._queue:
            if not b.future.done():
                b.future.set_exception(exc)
        self._queue = []


async def close_client(client: Any) -> None:
    """Close a Redis client made by connect() (None: nothing to close), waiting at most one
    call's timeout: the end of a run never hangs on Redis."""
    if client is not None:
        await asyncio.wait({asyncio.ensure_future(client.aclose())}, timeout=CALL_TIMEOUT)


async def read_status(client: Any, prefix: str = KEY_PREFIX) -> list[dict[str, Any]]:
    """Every limit key in Redis: ceilings, current pace, use, pause, 429s, active processes."""
    t = await client.time()
    now = (int(t[0]) - 1_700_000_000) + int(t[1]) / 1e6
    keys: list[str] = []
    async for raw in client.scan_iter(match=prefix + "*", count=500):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not name.endswith(":procs"):
            keys.append(name)
    out = []
    for name in sorted(keys):
        h = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (await client.hgetall(name)).items()
        }
        procs = await client.zcount(name + ":procs", now - PROCESS_SEEN, "+inf")

        def f(k: str, h: dict[str, str] = h) -> float | None:
            return float(h[k]) if h.get(k) else None

        m0 = f("m0") or 0.0
        this_minute = now - m0 < 60
        ru, rl, tu, tl = f("ru"), f("rl"), f("tu"), f("tl")
        out.append(
            {
                "key": name[len(prefix) :],
                "rpm_ceiling": _per_min(_lowest(ru, rl)),
                "tpm_ceiling": _per_min(_lowest(tu, tl)),
                "rpm_told": _per_min(ru),
                "tpm_told": _per_min(tu),
                "rpm_learned": _per_min(rl),
                "tpm_learned": _per_min(tl),
                "rpm_pace": _per_min(f("rr")),
                "tpm_pace": _per_min(f("tr")),
                "requests_last_minute": int(f("pr") or 0) if this_minute else 0,
                "tokens_last_minute": int(f("pt") or 0) if this_minute else 0,
                "requests_this_minute": int(f("mr") or 0) if this_minute else 0,
                "tokens_this_minute": int(f("mt") or 0) if this_minute else 0,
                "requests_total": int(f("n") or 0),
                "tokens_total": int(f("tok") or 0),
                "rate_limited": int(f("limited") or 0),
                "paused_for_s": round(max(0.0, (f("pause") or 0.0) - now), 3),
                "idle_s": round(max(0.0, now - (f("seen") or now)), 3),
                "active_processes": int(procs),
            }
        )
    return out


def _lowest(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v]
    return min(vals) if vals else None


def _per_min(v: float | None) -> float | None:
    return round(v * 60, 3) if v else None
