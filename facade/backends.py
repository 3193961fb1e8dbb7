"""Calls from the facade to logging_svc and messages_svc, at passing instances from the watched cache."""

from __future__ import annotations

import contextvars
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from hazelcast.errors import HazelcastError, SplitBrainProtectionError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from urllib3.exceptions import MaxRetryError, NewConnectionError
from werkzeug.exceptions import NotFound

from contracts import queue_item
from contracts.paging import LogCursor, MessagesCursor
from servicekit import balancing, metrics, request_id, tracing
from servicekit.balancing import Picker
from servicekit.discovery import Discovery, Instance
from servicekit.errors import StoreFailure, store_failure
from servicekit.hz import Hazelcast
from servicekit.outliers import OutlierDetector
from servicekit.retry_budget import RetryBudget
from servicekit.settings import Settings
from servicekit.web import BadGateway, InsufficientStorage, Unavailable

log = logging.getLogger(__name__)

LOGGING_SERVICE = "logging-service"
MESSAGES_SERVICE = "messages-service"
MAX_ATTEMPTS = 6
# Right after a worker starts, how long a request may wait for Consul's first answer.
FIRST_ANSWER_TIMEOUT = 1.0
# Retry-After of a refusal because the queue is full: the consumers take hundreds of messages a second, so a
# second frees room unless they are down (then the client hears 503 again).
QUEUE_FULL_RETRY_AFTER = 1
# The queue's room is asked at most every QUEUE_ROOM_FRESH seconds per worker while it was above
# QUEUE_ROOM_MARGIN: no stack posts the margin's 1,000 messages in half a second, so the room cannot run out
# unseen, and most POSTs skip that round trip to the queue's member. Near the bound every POST asks.
QUEUE_ROOM_FRESH = 0.5
QUEUE_ROOM_MARGIN = 1000

Send = Callable[[Instance, tuple[float, float]], requests.Response]
# The least a Hazelcast call of a request is given, however little of its deadline is left: a healthy
# member answers in a few milliseconds.
MIN_CALL_TIME = 0.05


class stop_at(stop_base):  # noqa: N801 - named like tenacity's own stops
    """Stop at a moment of time.monotonic(): the request's deadline (stop_after_delay counts from the first
    attempt, which may come after the request's other steps)."""

    def __init__(self, give_up_at: float):
        self.give_up_at = give_up_at

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.give_up_at


def time_left(give_up_at: float) -> float:
    return max(give_up_at - time.monotonic(), MIN_CALL_TIME)


class Reached(enum.Enum):
    """How far a failed call got at the instance, which decides whether another instance may be tried."""

    NO = "no"  # the connection was refused or never set up: the request never went out
    DONE = "done"  # it answered (5xx, or a body that is not JSON), or dropped the connection: its work is over
    MAYBE_STILL_WORKING = "maybe still working"  # the read timed out: it may still be on it
    REFUSED = "refused"  # it answered 503 {"stored": false}: it did nothing, and another instance may do it

    @staticmethod
    def of(exc: Exception) -> Reached:
        # ConnectTimeout is a ConnectionError too; ReadTimeout is not.
        if isinstance(exc, requests.ReadTimeout):
            return Reached.MAYBE_STILL_WORKING
        if isinstance(exc, requests.ConnectTimeout) or _never_sent(exc):
            return Reached.NO
        # Among them a connection closed or reset after the request went out ("Connection aborted": a worker
        # killed mid-request), which may well have been served.
        return Reached.DONE


def _never_sent(exc: Exception) -> bool:
    """A connection that could not be made (refused, unreachable, a name that does not resolve): requests
    wraps urllib3's NewConnectionError in a MaxRetryError. Any other ConnectionError may have carried the
    request."""
    cause = exc.args[0] if isinstance(exc, requests.ConnectionError) and exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return isinstance(cause, NewConnectionError)


def _refusal(response: requests.Response) -> str | None:
    """The error of a 503 whose body says `"stored": false` (logging_svc's WritesRefused, StoreUnavailable);
    None for any other answer."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("stored") is False:
        return str(body.get("error") or "writes refused")
    return None


class InstanceFailed(Exception):
    """One instance did not answer usefully; another may."""

    def __init__(self, reason: str, reached: Reached, refusal: str | None = None):
        super().__init__(reason)
        self.reached = reached
        self.refusal = refusal


class CallFailed(Unavailable):
    """No instance answered usefully. `maybe_done`: one of them may have done the work all the same (it
    answered 5xx, its read timed out, or it dropped the connection after the request went out), so a write
    may have landed."""

    def __init__(self, public: str, detail: str, maybe_done: bool, **fields: Any):
        super().__init__(public, detail, **fields)
        self.maybe_done = maybe_done


class AnotherMessageLogged(Exception):
    """logging_svc refused the message: its id already holds another one (409). Nothing was stored."""


@dataclass(frozen=True)
class Logged:
    by: str  # the logging instance that answered
    created: bool  # it stored the message; False: the id already held it


class Backends:
    def __init__(
        self,
        settings: Settings,
        discovery: Discovery,
        hazelcast: Hazelcast | None = None,
        session: requests.Session | None = None,
        pick: Picker | None = None,
    ):
        self._discovery = discovery
        self._hazelcast = hazelcast
        self._pick: Picker
        if pick is None:
            self.use_policy(settings.lb_policy)
        else:
            self._pick = pick
        # Calls in flight from this worker, by instance id: what the p2c policy compares.
        self._outstanding: dict[str, int] = {}
        self._outstanding_lock = threading.Lock()
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._deadline = settings.request_deadline
        # One pooled session per worker: keep-alive connections to every instance.
        # tracing.Session: every call carries the request's X-Request-ID and traceparent.
        self._http = session or tracing.Session()
        # No proxy, netrc or CA-bundle lookups in the environment on every call.
        self._http.trust_env = False
        self._budgets = {
            service: RetryBudget(settings.retry_budget_ratio, settings.retry_budget_minimum)
            for service in (LOGGING_SERVICE, MESSAGES_SERVICE)
        }
        # Instances whose calls keep failing while Consul still has them passing, left out for a while.
        self._outliers = {service: OutlierDetector(service) for service in (LOGGING_SERVICE, MESSAGES_SERVICE)}
        # GET /facade reads messages_svc here while the request thread reads logging_svc.
        self._reads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="backend-read")
        # The queue's remaining capacity as last read, and when (check_queue_room).
        self._queue_room = 0
        self._queue_room_at = float("-inf")

    def use_policy(self, name: str) -> None:
        """Pick instances by the named policy (servicekit.balancing.POLICIES) from the next call on."""
        self._pick = balancing.make(name)
        log.info("balancing by the %s policy", name)

    def forget_gone(self, service: str, registered: frozenset[str]) -> None:
        """Consul listed `registered` for `service` (its discovery watch's answer): what this worker keeps of
        any other instance goes, so instances that come and go leave nothing behind."""
        self._outliers[service].forget_all_but(registered)

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._discovery.close()
        self._http.close()

    def status(self) -> dict:
        found = self._discovery.status()
        for service, outliers in self._outliers.items():
            if service in found:
                # This worker's: each worker ejects on its own.
                found[service]["ejected"] = outliers.ejected()
        return found

    def deadline(self) -> float:
        """When a request that starts now must be answered (time.monotonic()): REQUEST_DEADLINE from now.
        A POST's steps (the queue's room, the log, the offer) share one."""
        return time.monotonic() + self._deadline

    def _call(
        self,
        service: str,
        send: Send,
        retry_after_timeout: bool = False,
        only: str | None = None,
        give_up_at: float | None = None,
    ) -> tuple[Instance, Any]:
        """Send to a random passing instance; after a failure, maybe try another one.

        Another instance is tried at once after a connection that could not be made or a split-brain refusal
        (the first did nothing), and after a 5xx, a timeout or a connection dropped once the request was sent
        (the first may have done it) only while the service's retry budget allows
        (servicekit/retry_budget): a slow tier then gets at most a tenth more calls, not one more per call.
        A call whose read timed out may still be running at the first instance, so it goes elsewhere only with
        `retry_after_timeout`, for calls whose work is small and safe to repeat (POST /logging: one
        put_if_absent by id); a read of the log is never doubled that way. The instance list comes from
        memory (no Consul call); the whole call, retries included, ends by `give_up_at` (the request's
        deadline, from now when not given). `only` names the one instance that may answer (a cursor of its own).
        """
        failed: dict[str, str] = {}
        if give_up_at is None:
            give_up_at = self.deadline()
        budget = self._budgets[service]
        budget.first_try()
        outliers = self._outliers[service]

        def candidates() -> tuple[Instance, ...]:
            instances = self._discovery.instances(service, timeout=FIRST_ANSWER_TIMEOUT)
            if only is not None:
                # A cursor's instance is the only one that can answer, ejected or not.
                return tuple(i for i in instances if i.id == only)
            return outliers.usable(instances)

        def pick() -> Instance:
            instances = candidates()
            if not instances:
                if only is not None:
                    # Gone, or restarting: either way what it held is gone with its memory.
                    raise NotFound(f"the {service} instance of this cursor is gone: start again without the cursor")
                raise Unavailable(f"no healthy {service} instance")
            return self._pick(instances, failed, self._outstanding)

        def pause(state: RetryCallState) -> float:
            # The next untried instance at once; once every instance failed (a rolling restart the cache
            # has not seen yet), a short jittered pause before going round again.
            # `failed` may hold instances ejected since: only the candidates count.
            if only is None and any(i.id not in failed for i in candidates()):
                return 0.0
            return random.uniform(0.05, 0.2)

        touched: list[bool] = []  # one entry per failed attempt: whether it reached the instance
        refusals: list[str | None] = []  # one entry per failed attempt: what a refusing instance said

        def give_up(public: str) -> CallFailed:
            # Every instance refused for the same reason (the log's database is down): the client is told it.
            fields = {"refused": refusals[0]} if len(set(refusals)) == 1 and refusals[0] is not None else {}
            return CallFailed(public, "; ".join(f"{k}: {v}" for k, v in failed.items()), any(touched), **fields)

        retrying = Retrying(
            retry=retry_if_exception_type(InstanceFailed),
            stop=stop_after_attempt(MAX_ATTEMPTS) | stop_at(give_up_at),
            wait=pause,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    instance = pick()
                    metrics.count_attempt(service, instance.id, retry=attempt.retry_state.attempt_number > 1)
                    remaining = max(give_up_at - time.monotonic(), 0.05)
                    timeout = (min(self._connect_timeout, remaining), min(self._read_timeout, remaining))
                    try:
                        answer = self._once(service, instance, send, timeout, failed)
                    except InstanceFailed as exc:
                        # Every way an instance fails a call counts towards its ejection; a 4xx or a full log
                        # (not InstanceFailed) says nothing about the instance.
                        if outliers.failed(instance.id, str(exc)):
                            metrics.count_ejection(service, instance.id)
                        touched.append(exc.reached not in (Reached.NO, Reached.REFUSED))
                        refusals.append(exc.refusal)
                        last = attempt.retry_state.attempt_number >= MAX_ATTEMPTS or time.monotonic() >= give_up_at
                        if last or exc.reached in (Reached.NO, Reached.REFUSED):
                            # The instance did nothing (no connection, or writes refused for lack of
                            # members): another one is tried at once, at no cost to the budget.
                            raise
                        if exc.reached is Reached.MAYBE_STILL_WORKING and not retry_after_timeout:
                            raise give_up(f"{service} did not answer in time") from None
                        if not budget.try_retry():
                            raise give_up(f"{service} failed and its retry budget is spent") from None
                        raise
                    outliers.succeeded(instance.id)
                    return instance, answer
        except InstanceFailed:
            raise give_up(f"every {service} instance failed") from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _sent(self, instance: Instance, change: int) -> None:
        with self._outstanding_lock:
            count = self._outstanding.get(instance.id, 0) + change
            if count:
                self._outstanding[instance.id] = count
            else:
                # Instances come and go: an idle one leaves no entry behind.
                del self._outstanding[instance.id]

    def _once(
        self, service: str, instance: Instance, send: Send, timeout: tuple[float, float], failed: dict[str, str]
    ) -> Any:
        try:
            self._sent(instance, +1)
            try:
                response = send(instance, timeout)
            finally:
                self._sent(instance, -1)
            if response.status_code == 507:
                # The log is full for every instance alike (they share it): no other instance is tried.
                raise InsufficientStorage("the log is full", f"{instance.id}: {response.text[:200]}")
            refusal = _refusal(response) if response.status_code == 503 else None
            if refusal is not None:
                # A logging instance whose member sees too few members (split-brain protection), or whose
                # member cannot reach the log's database: nothing was stored there, and another instance (on
                # the larger side of a split) may store it.
                raise InstanceFailed(f"HTTP 503, nothing stored: {refusal}", Reached.REFUSED, refusal)
            if response.status_code >= 500:
                raise InstanceFailed(f"HTTP {response.status_code}", Reached.DONE)
            if response.status_code >= 400:
                # The facade validated the request, so a 4xx here is a contract mismatch, not bad input,
                # and no other instance would answer differently. The log names the instance; the client
                # learns only which service refused.
                log.error("%s rejected a request: %s %s", instance.id, response.status_code, response.text[:200])
                raise BadGateway(f"{service} rejected the request")
            return response.json()
        except (requests.RequestException, ValueError, InstanceFailed) as exc:
            if isinstance(exc, InstanceFailed):
                reason, reached, refusal = str(exc), exc.reached, exc.refusal
            else:
                reason, reached, refusal = type(exc).__name__, Reached.of(exc), None
            failed[instance.id] = reason
            metrics.count_failure(service, instance.id, reason)
            log.warning("%s failed (%s)", instance.id, reason)
            raise InstanceFailed(reason, reached, refusal) from exc

    def log_message(self, message_id: str, msg: str, give_up_at: float | None = None) -> Logged:
        """Store the message through one logging instance. AnotherMessageLogged when the id holds another
        message: the log's answer for every instance (they share it), so no other one is tried."""

        def send(instance: Instance, timeout: tuple[float, float]) -> requests.Response:
            response = self._http.post(f"{instance.url}/logging", json={"id": message_id, "msg": msg}, timeout=timeout)
            if response.status_code == 409:
                log.warning("%s: another message is logged under id %s", instance.id, message_id)
                raise AnotherMessageLogged(message_id)
            return response

        instance, body = self._call(LOGGING_SERVICE, send, retry_after_timeout=True, give_up_at=give_up_at)
        # Only logging_svc's explicit word counts as "this call stored it" (facade/idempotency.py relies on it).
        return Logged(instance.id, created=isinstance(body, dict) and body.get("created") is True)

    def check_queue_room(self, give_up_at: float | None = None) -> None:
        """Refuse before anything is stored when the queue is full (max-size in conf/hazelcast.xml): the
        consumers are that far behind. One call to the queue's member, remaining_capacity, skipped while the
        last answer is fresh and far from the bound."""
        if self._hazelcast is None or not self._hazelcast.connected:
            # Nothing to ask; the offer after the log write answers for the queue, as before.
            return
        now = time.monotonic()
        if now - self._queue_room_at < QUEUE_ROOM_FRESH and self._queue_room > QUEUE_ROOM_MARGIN:
            return
        queue = self._hazelcast.queue(time_left(give_up_at or self.deadline()))
        self._queue_room = queue.remaining_capacity()
        self._queue_room_at = now
        metrics.observe_queue_room(self._queue_room)
        if self._queue_room <= 0:
            raise Unavailable(
                "the message queue is full", retry_after=QUEUE_FULL_RETRY_AFTER, logged=False, queued=False
            )

    def queue_message(self, message_id: str, msg: str, give_up_at: float | None = None) -> None:
        """Put the message on the queue messages_svc consumes."""
        if self._hazelcast is None:
            raise Unavailable("the message queue is not configured")
        # Not retried: an offer that timed out may still have landed, and a second one would queue it twice.
        try:
            queue = self._hazelcast.queue(time_left(give_up_at or self.deadline()))
            queued = queue.offer(queue_item.encode(message_id, msg, request_id.current_id()))
        except SplitBrainProtectionError as exc:
            metrics.count_offer("no_quorum")
            # Refused by the queue's member before it took the item: certainly not queued.
            raise Unavailable("the message queue refuses writes: too few Hazelcast members", str(exc)) from None
        except HazelcastError as exc:
            metrics.count_offer("error")
            if store_failure(exc) is StoreFailure.REFUSED:
                # The member could not write the item through to PostgreSQL: it did not take it.
                raise Unavailable("the message queue's database is unavailable", str(exc).split("\n", 1)[0]) from None
            raise
        except Exception:
            metrics.count_offer("error")
            raise
        metrics.count_offer("queued" if queued else "full")
        if not queued:
            # The queue filled between check_queue_room and here: the message is logged but will not be
            # consumed (facade.routes answers a 503 that says so).
            raise Unavailable("the message queue is full", f"message {message_id} logged but not queued")

    def logged_messages(self, limit: int, after: LogCursor | None) -> tuple[list[str], str | None]:
        """One page of the log, oldest first, and the cursor of the next page (None on the last)."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after.encode()
        _, body = self._call(
            LOGGING_SERVICE, lambda i, timeout: self._http.get(f"{i.url}/logging", params=params, timeout=timeout)
        )
        return body["messages"], body["next"]

    def read_page(self, limit: int, after: LogCursor | None, messages_after: MessagesCursor | None) -> dict[str, Any]:
        """A page of the log and a page of one messages instance, read at the same time: the answer takes
        as long as the slower read, not the sum of both."""
        # In a copy of this context: the other thread's calls and log lines carry this request's id.
        consumed = self._reads.submit(contextvars.copy_context().run, self.consumed_messages, limit, messages_after)
        try:
            logged, following = self.logged_messages(limit, after)
        except BaseException:
            consumed.cancel()
            raise
        messages_from, messages, messages_next = consumed.result()
        return {
            "logging": logged,
            "messages": messages,
            # messages_from names the instance that answered: each holds only the messages it consumed.
            "messages_from": messages_from,
            "next": following,
            "messages_next": messages_next,
        }

    def consumed_messages(self, limit: int, after: MessagesCursor | None) -> tuple[str, list[str], str | None]:
        """A page of the messages one messages instance holds (the cursor's instance, when there is a
        cursor), that instance's id, and the cursor of its next page."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after.after
        instance, body = self._call(
            MESSAGES_SERVICE,
            lambda i, timeout: self._http.get(f"{i.url}/messages", params=params, timeout=timeout),
            only=None if after is None else after.instance_id,
        )
        following = None if body["next"] is None else MessagesCursor(instance.id, int(body["next"])).encode()
        return instance.id, body["messages"], following
