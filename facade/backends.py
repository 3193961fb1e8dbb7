"""Calls from the facade to logging_svc and messages_svc, at passing instances from the watched cache."""

from __future__ import annotations

import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from hazelcast.errors import HazelcastError, SplitBrainProtectionError

from contracts import queue_item
from contracts.paging import LogCursor, MessagesCursor
from servicekit import metrics, request_id, tracing
from servicekit.discovery import Instance
from servicekit.errors import StoreFailure, Unavailable, store_failure
from servicekit.hz import Bounded, Hazelcast
from upstream.balancing import Picker
from upstream.caller import Caller, Send
from upstream.watch import Discovery

from .settings import FacadeSettings

log = logging.getLogger(__name__)

LOGGING_SERVICE = "logging-service"
MESSAGES_SERVICE = "messages-service"
# Retry-After of a refusal because the queue is full: the consumers take hundreds of messages a second, so a
# second frees room unless they are down (then the client hears 503 again).
QUEUE_FULL_RETRY_AFTER = 1
# The queue's room is asked at most every QUEUE_ROOM_FRESH seconds per worker while it was above
# QUEUE_ROOM_MARGIN: no stack posts the margin's 1,000 messages in half a second, so the room cannot run out
# unseen, and most POSTs skip that round trip to the queue's member. Near the bound every POST asks.
QUEUE_ROOM_FRESH = 0.5
QUEUE_ROOM_MARGIN = 1000

# The least a Hazelcast call of a request is given, however little of its deadline is left: a healthy
# member answers in a few milliseconds.
MIN_CALL_TIME = 0.05


def time_left(give_up_at: float) -> float:
    return max(give_up_at - time.monotonic(), MIN_CALL_TIME)


class AnotherMessageLogged(Exception):
    """logging_svc refused the message: its id already holds another one (409). Nothing was stored."""


@dataclass(frozen=True)
class Logged:
    by: str  # the logging instance that answered
    created: bool  # it stored the message; False: the id already held it


class Backends:
    def __init__(
        self,
        settings: FacadeSettings,
        discovery: Discovery,
        hazelcast: Hazelcast | None = None,
        session: requests.Session | None = None,
        pick: Picker | None = None,
    ):
        self._discovery = discovery
        self._hazelcast = hazelcast
        metrics.start_store_failures("queue")
        self.caller = Caller(
            discovery,
            (LOGGING_SERVICE, MESSAGES_SERVICE),
            policy=settings.lb_policy,
            timeouts=(settings.connect_timeout, settings.read_timeout),
            retry_budget=(settings.retry_budget_ratio, settings.retry_budget_minimum),
            pick=pick,
        )
        self._deadline = settings.request_deadline
        # One pooled session per worker: keep-alive connections to every instance.
        # tracing.Session: every call carries the request's X-Request-ID and traceparent.
        self._http = session or tracing.Session()
        # No proxy, netrc or CA-bundle lookups in the environment on every call.
        self._http.trust_env = False
        # GET /facade reads messages_svc here while the request thread reads logging_svc.
        self._reads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="backend-read")
        # The queue's remaining capacity as last read, and when (check_queue_room).
        self._queue_room = 0
        self._queue_room_at = float("-inf")

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._discovery.close()
        self._http.close()

    def status(self) -> dict:
        found = self._discovery.status()
        for service in (LOGGING_SERVICE, MESSAGES_SERVICE):
            if service in found:
                # This worker's: each worker ejects on its own.
                found[service]["ejected"] = self.caller.ejected(service)
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
        """upstream.caller.Caller.call, by the request's deadline (from now when not given)."""
        if give_up_at is None:
            give_up_at = self.deadline()
        return self.caller.call(service, send, give_up_at, retry_after_timeout, only)

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
        queue = self._queue(self._hazelcast, time_left(give_up_at or self.deadline()))
        self._queue_room = queue.remaining_capacity()
        self._queue_room_at = now
        metrics.observe_queue_room(self._queue_room)
        if self._queue_room <= 0:
            raise Unavailable(
                "the message queue is full", retry_after=QUEUE_FULL_RETRY_AFTER, logged=False, queued=False
            )

    @staticmethod
    def _queue(hz: Hazelcast, timeout: float) -> Bounded:
        """The queue messages_svc consumes, named in Consul KV (config/messages/queue)."""
        return hz.get_queue(hz.shared_config().queue_name, timeout)

    def queue_message(self, message_id: str, msg: str, give_up_at: float | None = None) -> None:
        """Put the message on the queue messages_svc consumes."""
        if self._hazelcast is None:
            raise Unavailable("the message queue is not configured")
        # Not retried: an offer that timed out may still have landed, and a second one would queue it twice.
        try:
            queue = self._queue(self._hazelcast, time_left(give_up_at or self.deadline()))
            queued = queue.offer(queue_item.encode(message_id, msg, request_id.current_id()))
        except SplitBrainProtectionError as exc:
            metrics.count_offer("no_quorum")
            # Refused by the queue's member before it took the item: certainly not queued.
            raise Unavailable("the message queue refuses writes: too few Hazelcast members", str(exc)) from None
        except HazelcastError as exc:
            metrics.count_offer("error")
            failure = store_failure(exc)
            if failure is not None:
                metrics.count_store_failure("queue", "refused" if failure is StoreFailure.REFUSED else "unknown")
            if failure is StoreFailure.REFUSED:
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
