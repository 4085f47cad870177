"""Registration with a SIP trunk (RFC 3261 10), and the UAC's answer to digest challenges.

Registration keeps one binding alive: REGISTER with our Contact, answer a 401/407 with
digest credentials (new CSeq, same Call-ID), refresh at 50-80 % of the Expires the
registrar granted, back off exponentially (with jitter) after a failure or timeout, and
REGISTER with Expires: 0 at shutdown. DigestClient is shared by outbound INVITEs and
REFER: one retry per challenge, unless the server says the nonce was only stale.

Time is read from the injectable clock; every wait is a clock sleep, so tests drive the
whole refresh/back-off schedule with a ManualClock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from media.clock import Clock
from pipeline.metrics import Metrics
from sip.digest import (
    AUTH_HEADERS,
    DigestError,
    authorize,
    choose_challenge,
    new_cnonce,
    parse_challenges,
)
from sip.headers import Address, CSeq, Headers
from sip.message import SipRequest, SipResponse, build_request, new_call_id, new_tag
from sip.transaction import TransactionError, TransactionLayer, TransactionTimeout
from sip.transport import Target
from sip.uri import Uri, bare_host, parse_hostport

__all__ = ["DigestClient", "Registration", "RegistrationError", "RegistrationState",
           "TrunkAccount", "UacMetrics", "uac_metrics", "with_deadline"]

log = logging.getLogger(__name__)
T = TypeVar("T")
LocalAddress = Callable[[Target], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class TrunkAccount:
    """The trunk we register with and dial out through (from switchboard's TrunkConfig)."""

    host: str
    port: int = 5060
    username: str = ""
    password: str = field(default="", repr=False)
    realm: str | None = None  # answer only this realm's challenges when set
    domain: str | None = None  # From/To/AoR domain; defaults to the registrar host[:port]
    expires: int = 600
    transport: Literal["udp", "tcp"] = "udp"

    @classmethod
    def parse(cls, registrar: str, **kwargs: Any) -> TrunkAccount:
        """`registrar` is "host[:port]" as written in the config."""
        host, port = parse_hostport(registrar.strip(), "registrar")
        return cls(host=host, port=port or 5060, **kwargs)

    @property
    def target(self) -> Target:
        return Target(self.transport, bare_host(self.host), self.port)

    @property
    def domain_name(self) -> str:
        return self.domain or (self.host if self.port == 5060 else f"{self.host}:{self.port}")

    @property
    def aor(self) -> Address:
        """Our address-of-record: sip:username@domain."""
        return Address(Uri.parse(f"sip:{self.username}@{self.domain_name}"))

    def digest(self) -> DigestClient | None:
        return DigestClient(self.username, self.password, self.realm) if self.username else None


class DigestClient:
    """Answers 401/407 challenges for one account (RFC 3261 22.2, RFC 7616)."""

    def __init__(self, username: str, password: str, realm: str | None = None) -> None:
        self.username = username
        self.password = password
        self.realm = realm
        self._nc: dict[str, int] = {}  # nonce -> last nonce count we used

    def answer(self, request: SipRequest, response: SipResponse) -> SipRequest | None:
        """`request` again with credentials and CSeq + 1 (and no Via: the transaction
        layer adds a new branch), or None when the challenge cannot or should not be
        answered: no usable Digest challenge, another realm, or our credentials were
        already refused (the same realm challenges again without stale=true)."""
        headers = AUTH_HEADERS.get(response.status)
        if headers is None:
            return None
        challenge_header, credentials_header = headers
        challenges = parse_challenges(response.headers.get_lines(challenge_header))
        if self.realm is not None:
            challenges = [c for c in challenges if c.realm == self.realm]
        try:
            challenge = choose_challenge(challenges)
        except DigestError as exc:
            log.info("%s %d: %s", request.method, response.status, exc)
            return None
        sent_realms = {_realm_of(v) for v in request.headers.get_lines(credentials_header)}
        if challenge.realm in sent_realms and not challenge.stale:
            log.info("%s: credentials for realm %r refused", request.method, challenge.realm)
            return None
        nc = self._nc.get(challenge.nonce, 0) + 1
        if len(self._nc) > 64:
            self._nc.clear()
        self._nc[challenge.nonce] = nc
        credentials = authorize(challenge, username=self.username, password=self.password,
                                method=request.method, uri=str(request.uri),
                                cnonce=new_cnonce(), nc=nc)
        kept = [(n, v) for n, v in request.headers
                if n != "Via" and not (n == credentials_header and _realm_of(v) == challenge.realm)]
        retried = SipRequest(request.method, request.uri, Headers(kept), request.body)
        retried = retried.with_header(credentials_header, credentials)
        return retried.with_replaced("CSeq", CSeq(request.cseq.seq + 1, request.method))


def _realm_of(credentials: str) -> str | None:
    marker = 'realm="'
    start = credentials.find(marker)
    if start < 0:
        return None
    end = credentials.find('"', start + len(marker))
    return credentials[start + len(marker):end] if end > 0 else None


# -- metrics ---------------------------------------------------------------------------------
# These belong in pipeline.metrics.Metrics (one file for every metric); until they move
# there they are created once per Metrics object, on its registry.

@dataclass(frozen=True, slots=True)
class UacMetrics:
    registered: Gauge
    registrations_total: Counter
    outbound_calls_total: Counter
    outbound_setup_seconds: Histogram
    transfers_total: Counter


def uac_metrics(metrics: Metrics) -> UacMetrics:
    """The client-side SIP metrics (defined with all others in pipeline/metrics.py)."""
    return UacMetrics(
        registered=metrics.sip_registered,
        registrations_total=metrics.sip_registrations_total,
        outbound_calls_total=metrics.sip_outbound_calls_total,
        outbound_setup_seconds=metrics.sip_outbound_setup_seconds,
        transfers_total=metrics.sip_transfers_total,
    )


async def with_deadline(clock: Clock, deadline: float, coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro`, or raise TimeoutError once the clock passes `deadline`."""
    task = asyncio.ensure_future(coro)
    timer = asyncio.ensure_future(clock.sleep_until(deadline))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise TimeoutError(f"no result within the deadline at {deadline:.3f}")
    return task.result()


# -- registration ----------------------------------------------------------------------------

class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    RETRYING = "retrying"  # the last attempt failed; waiting to try again
    STOPPED = "stopped"


class RegistrationError(Exception):
    """One REGISTER cycle failed. `status` is the final response (None: no response)."""

    def __init__(self, message: str, status: int | None = None, outcome: str = "error",
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome  # registrations_total label
        self.retry_after = retry_after


class Registration:
    """Keeps our binding at the trunk's registrar. start() once; stop() at shutdown."""

    def __init__(
        self,
        account: TrunkAccount,
        *,
        transactions: TransactionLayer,
        local_address: LocalAddress,
        clock: Clock,
        metrics: Metrics,
        user_agent: str = "Switchboard",
        rng: random.Random | None = None,
        refresh_window: tuple[float, float] = (0.5, 0.8),
        retry_base: float = 2.0,
        retry_max: float = 300.0,
    ) -> None:
        self.account = account
        self._tx = transactions
        self._local_address = local_address
        self._clock = clock
        self._metrics = uac_metrics(metrics)
        self.user_agent = user_agent
        self._rng = rng or random.SystemRandom()
        self.refresh_window = refresh_window
        self.retry_base, self.retry_max = retry_base, retry_max
        self.call_id = new_call_id()
        self._tag = new_tag()
        self._cseq = self._rng.randrange(1, 2**16)
        self._auth = account.digest()
        self.state = RegistrationState.IDLE
        self.expires_at: float | None = None  # when the current binding lapses
        self.next_attempt: float | None = None  # when the loop will REGISTER next
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.failures = 0  # consecutive
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def registered(self) -> bool:
        return self.expires_at is not None and self._clock.now() < self.expires_at

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"sip-register-{self.account.username}")

    async def wait_state(self, *states: RegistrationState) -> RegistrationState:
        """Wait until the state is one of `states` (for tests and start-up checks)."""
        while self.state not in states:
            self._changed.clear()
            await self._changed.wait()
        return self.state

    def _set_state(self, state: RegistrationState) -> None:
        self.state = state
        self._metrics.registered.set(1 if state is RegistrationState.REGISTERED else 0)
        self._changed.set()

    async def _run(self) -> None:
        while True:
            self._set_state(RegistrationState.REGISTERING)
            try:
                granted = await self._register(self.account.expires)
                if granted <= 0:
                    raise RegistrationError("the registrar granted no time", self.last_status,
                                            "rejected")
            except (RegistrationError, ValueError) as exc:  # ValueError: an unusable reply
                failure = exc if isinstance(exc, RegistrationError) else \
                    RegistrationError(f"unusable response: {exc}", self.last_status)
                self._failed(failure)
                delay = self.retry_delay(self.failures - 1, failure.retry_after)
                self.next_attempt = self._clock.now() + delay
                log.warning("registration to %s failed (%s); retrying in %.1f s",
                            self.account.target.host, failure, delay)
                self._set_state(RegistrationState.RETRYING)
            else:
                now = self._clock.now()
                self.failures = 0
                self.last_error = None
                self.expires_at = now + granted
                refresh = granted * self._rng.uniform(*self.refresh_window)
                self.next_attempt = now + max(1.0, refresh)
                self._metrics.registrations_total.labels("ok").inc()
                log.info("registered %s at %s:%d for %d s", self.account.aor.uri,
                         self.account.target.host, self.account.port, granted)
                self._set_state(RegistrationState.REGISTERED)
            await self._clock.sleep_until(self.next_attempt)

    def _failed(self, exc: RegistrationError) -> None:
        self.failures += 1
        self.last_error = str(exc)
        self._metrics.registrations_total.labels(exc.outcome).inc()
        if not self.registered:
            self.expires_at = None

    def retry_delay(self, failures: int, retry_after: int | None = None) -> float:
        """Exponential back-off with jitter: base * 2**n, capped, times 0.5-1.0; never
        sooner than a Retry-After the registrar asked for."""
        delay = min(self.retry_max, self.retry_base * 2 ** min(failures, 30))
        delay *= self._rng.uniform(0.5, 1.0)
        return max(delay, float(retry_after or 0))

    async def _register(self, expires: int) -> int:
        """One REGISTER cycle, challenges included. Returns the granted expiry."""
        request = self._request(expires)
        for _ in range(4):  # first try, a challenge or two (401 then 407), 423
            self._cseq = request.cseq.seq
            try:
                response = await self._tx.request(request, self.account.target).result()
            except TransactionTimeout as exc:
                raise RegistrationError(str(exc), None, "timeout") from None
            except TransactionError as exc:
                raise RegistrationError(str(exc), None, "error") from None
            status = self.last_status = response.status
            if 200 <= status < 300:
                return granted_expires(response, request, expires)
            retried = None
            if status in (401, 407) and self._auth is not None:
                retried = self._auth.answer(request, response)
                if retried is None:
                    raise RegistrationError(f"{status} {response.reason}: credentials refused",
                                            status, "auth_failed")
            elif status == 423 and response.header("Min-Expires"):
                expires = _min_expires(response, expires)
                retried = self._request(expires, cseq=request.cseq.seq + 1)
            if retried is None:
                outcome = "auth_failed" if status in (401, 403, 407) else "rejected"
                raise RegistrationError(f"{status} {response.reason}", status, outcome,
                                        _retry_after(response))
            request = retried
        raise RegistrationError("too many challenges", self.last_status, "auth_failed")

    def _request(self, expires: int, cseq: int | None = None) -> SipRequest:
        account = self.account
        host, port = self._local_address(account.target)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        contact_uri = Uri("sip", host, account.username or None, port=port)
        if account.transport == "tcp":
            contact_uri = contact_uri.with_params(transport="tcp")
        aor = account.aor
        return build_request(
            "REGISTER", Uri.parse(f"sip:{account.domain_name}"),
            from_addr=aor.with_tag(self._tag), to_addr=aor, call_id=self.call_id,
            cseq=cseq if cseq is not None else self._cseq + 1,
            contact=Address(contact_uri),
            extra=[("Expires", expires), ("User-Agent", self.user_agent)],
        )

    async def stop(self, *, unregister: bool = True, timeout: float = 5.0) -> None:
        """Stop refreshing and, if a binding may exist, remove it (Expires: 0)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))  # our own cancellation still propagates
            self._task = None
        bound = self.registered or self.state is RegistrationState.REGISTERING
        if unregister and bound and self.state is not RegistrationState.STOPPED:
            try:
                await with_deadline(self._clock, self._clock.now() + timeout, self._register(0))
                log.info("unregistered %s", self.account.aor.uri)
            except (RegistrationError, TimeoutError) as exc:
                log.warning("unregister from %s failed: %s", self.account.target.host, exc)
        self.expires_at = None
        self._set_state(RegistrationState.STOPPED)


def granted_expires(response: SipResponse, request: SipRequest, asked: int) -> int:
    """RFC 3261 10.2.4: the expires of our Contact in the 200, else its Expires header,
    else what we asked for."""
    ours = request.contacts[0].uri if request.contacts else None
    contacts = response.contacts
    for contact in contacts:
        uri = contact.uri
        if ours is not None and (uri.user, uri.host, uri.port) == (ours.user, ours.host, ours.port):
            if contact.expires is not None:
                return contact.expires
    if len(contacts) == 1 and contacts[0].expires is not None:
        return contacts[0].expires  # a registrar behind NAT may rewrite our Contact
    return response.expires if response.expires is not None else asked


def _min_expires(response: SipResponse, asked: int) -> int:
    value = (response.header("Min-Expires") or "").strip()
    return max(asked, int(value)) if value.isdigit() and len(value) < 10 else asked * 2


def _retry_after(response: SipResponse) -> int | None:
    value = (response.header("Retry-After") or "").split(";")[0].split("(")[0].strip()
    return min(int(value), 3600) if value.isdigit() and len(value) < 10 else None
