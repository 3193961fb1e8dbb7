"""The background consumer: polls the Hazelcast queue and keeps each message in memory."""

from __future__ import annotations

import collections
import logging
import threading
import time

from hazelcast.errors import HazelcastError

from contracts import queue_item
from servicekit import metrics, request_id
from servicekit.background import BackgroundLoop
from servicekit.errors import HazelcastUnavailable
from servicekit.gunicorn_hooks import Intake
from servicekit.hz import Hazelcast, Structures
from servicekit.kvconfig import SharedConfig

log = logging.getLogger(__name__)

# An empty queue is looked at again after this long, or as soon as the queue's item listener says an item
# was added (events are not highly available: a failover can lose one, so the look is a floor). The poll
# itself never waits on the member: a poll parked in a member's wait set while the members repartition
# (a member dropped 10 s after its host was cut off) could take the next item offered and have its answer
# dropped (the member that forwarded it had already been told to retry it): an acknowledged message that
# nobody consumed, seen in 2 of 7 fresh-clone runs of the host cut test (docs/RELIABILITY.md). A poll that
# is not parked runs at once and answers once.
POLL_TIMEOUT = 1.0
# How often a consumer waiting for an item looks at the intake (the master's flag, in shared memory).
INTAKE_LOOK = 0.05
# How often a consumer whose client is not connected looks again.
DISCONNECTED_POLL = 0.2


def structures(shared: SharedConfig) -> Structures:
    """The queue the facade offers to, named in Consul KV (config/messages/queue); made once connected."""
    return Structures(queues=(shared.queue_name,))


class MessageStore:
    """What this instance consumed, in the order it took it: the newest `kept` (MESSAGES_KEPT) of it. Lives
    in the worker's memory only; the log keeps every message, this is a window onto the latest.

    Each message has a number, one more than the one before; a page's cursor is the last number it held,
    so dropping the oldest messages does not move a cursor onto other messages. The first number is the
    time the store was made, in microseconds: a restarted instance numbers above anything its previous
    process handed out, so an old cursor reads the new process from its oldest message.

    A message whose id it already holds is dropped: the queue can hand an item out twice (its member died
    after the item's row was deleted in PostgreSQL and before its backup heard of the poll, so the backup
    still has it; or the reverse after a power cut), and the instance keeps it once."""

    def __init__(self, kept: int = 20_000):
        self._lock = threading.Lock()
        self.kept = kept
        # A ring of up to `kept` slots, the oldest message at self._head: at the cap a message takes the
        # oldest one's slot, O(1) under the lock GET /messages takes (a list's `del [0]` moved every message
        # kept), and a page is at most two slices of it.
        self._ring: list[str] = []
        self._head = 0
        # The number of the oldest message.
        self._first = time.time_ns() // 1000
        self.let_go = 0
        # The ids of the messages held, oldest first (an item without an id is never a duplicate).
        self._ids: collections.deque[str] = collections.deque()
        self._id_set: set[str] = set()
        self.duplicates = 0

    def append(self, msg: str, message_id: str = "") -> bool:
        """Keep the message; False (and nothing kept) when a message with this id is already held."""
        with self._lock:
            if message_id:
                if message_id in self._id_set:
                    self.duplicates += 1
                    return False
                self._id_set.add(message_id)
            # The ids in the ring's order, oldest on the left: the one let go below is the leftmost.
            self._ids.append(message_id)
            if len(self._ring) < self.kept:
                self._ring.append(msg)
                return True
            # The oldest goes; its number with it, so every other message keeps its number.
            self._ring[self._head] = msg
            self._head = (self._head + 1) % self.kept
            self._id_set.discard(self._ids.popleft())
            self._first += 1
            self.let_go += 1
            return True

    def _slice(self, start: int, stop: int) -> list[str]:
        """The messages from the `start`th oldest to before the `stop`th, in order; under the lock."""
        held = len(self._ring)
        stop = min(stop, held)
        if start >= stop:
            return []
        # The ring wraps only once it is full, and then its slots number `held`.
        low, high = self._head + start, self._head + stop
        if high <= held:
            return self._ring[low:high]
        if low >= held:
            return self._ring[low - held : high - held]
        return self._ring[low:] + self._ring[: high - held]

    def snapshot(self) -> list[str]:
        with self._lock:
            return self._slice(0, len(self._ring))

    def page(self, after: int | None, limit: int) -> tuple[list[str], int | None]:
        """Up to `limit` messages numbered after `after` (from the oldest kept when None or when those are
        gone), and the number to pass as `after` for the next page: None when this page reached the newest."""
        with self._lock:
            start = 0 if after is None else max(after + 1 - self._first, 0)
            page = self._slice(start, start + limit)
            last = self._first + start + len(page) - 1
            more = start + limit < len(self._ring)
        return page, last if more else None

    def status(self) -> dict:
        """For /health: how many it holds, at most keeps, and let go so far."""
        with self._lock:
            return {
                "held": len(self._ring),
                "kept": self.kept,
                "let_go": self.let_go,
                "duplicates": self.duplicates,
            }


class Consumer:
    """Takes items from the queue while the intake is open.

    The master closes the intake before the instance leaves Consul: what an instance takes after that
    is in memory no `GET /facade` reaches any more, and dies with it. `stop` is for this worker alone
    (worker_exit), when the instance stays.
    """

    def __init__(self, hz: Hazelcast, store: MessageStore, intake: Intake):
        self._hz = hz
        self._store = store
        self._intake = intake
        self._loop = BackgroundLoop("queue-consumer", self._consume_once)
        self._poll = self._loop.retrying((HazelcastError, HazelcastUnavailable), on_retry=self._poll_failed)
        # Set by the queue's item listener (on the client's reactor thread) and by stop().
        self._added = threading.Event()
        self._listening = False

    @property
    def ready(self) -> bool:
        # Stopped because the instance is leaving is not broken: it still serves what it holds while it drains.
        return self._hz.connected and (self._loop.is_alive() or self._intake.closed)

    def start(self) -> Consumer:
        self._loop.start()
        return self

    def stop(self, timeout: float = POLL_TIMEOUT + 1) -> None:
        self._loop.stop()  # asks the loop to end,
        self._added.set()  # ends its wait for an item,
        self._loop.stop(timeout)  # and waits for it

    def _consume_once(self) -> bool | None:
        if not self._hz.connected:
            self._loop.wait(DISCONNECTED_POLL)
            return None
        self._listen()
        # A failed poll is retried with the shared backoff; between tries the intake is not held.
        return self._poll(self._take_one)

    def _wait_for_an_item(self) -> None:
        """Until the item listener says an item was added, POLL_TIMEOUT at most, and no longer once the intake
        is closed or the loop stopping."""
        deadline = time.monotonic() + POLL_TIMEOUT
        while not self._intake.closed and not self._loop.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._added.wait(min(remaining, INTAKE_LOOK)):
                return

    def _item_added(self, _event) -> None:
        self._added.set()

    def _listen(self) -> None:
        """Register the item listener once per client (it registers itself again on every new connection)."""
        if self._listening:
            return
        try:
            queue = self._hz.get_queue(self._hz.shared_config().queue_name)
            queue.blocking().add_listener(include_value=False, item_added_func=self._item_added)
        except (HazelcastError, HazelcastUnavailable) as exc:
            log.warning("cannot listen to the queue yet (looked at every %.0f s meanwhile): %s", POLL_TIMEOUT, exc)
            return
        self._listening = True

    def _take_one(self) -> bool | None:
        """Poll once, holding the intake open, and keep what came: True when an item came, None when the queue
        was empty, False once the intake is closed."""
        if not self._hz.connected:
            # Gone since the last look: back to waiting quietly for the client, not retrying.
            return None
        with self._intake.taking() as is_open:
            if not is_open:
                log.info("stopped taking messages from the queue: this instance is leaving Consul")
                return False
            # Cleared before the poll: an item added after it sets the event, and the wait below ends at once.
            self._added.clear()
            try:
                queue = self._hz.get_queue(self._hz.shared_config().queue_name).blocking()
                # Without a timeout: the member answers at once, with an item or None (see POLL_TIMEOUT).
                # Unbounded on the client: a poll given up on could still take an item, which nobody would keep.
                item = queue.poll()
            except (HazelcastError, HazelcastUnavailable):
                # Retried by the loop (_poll); a split-brain refusal is a HazelcastError too.
                metrics.count_poll("error")
                raise
            metrics.count_poll("empty" if item is None else "item")
            if item is None:
                # Inside the take, as a poll that waited on the member was: the master that closes the intake
                # waits for it, and it ends as soon as the intake is closed.
                self._wait_for_an_item()
                return None
            taken = queue_item.decode_item(item)
            if taken is None:
                log.error("dropping a queue item that is not a facade message: %.200r", item)
            elif not self._store.append(taken.msg, taken.id):
                log.warning(
                    "dropping message %s: this instance already holds it (the queue handed it out again)", taken.id
                )
            else:
                metrics.count_taken()
                # The consumer's hop in ./scripts/trace. An item without a request id (queued by an older
                # facade, or by the bench's fill) cannot be followed: its line is a debug one.
                with request_id.bound(taken.request_id):
                    log.log(
                        logging.INFO if taken.request_id else logging.DEBUG, "took message %s from the queue", taken.id
                    )
        return True

    @staticmethod
    def _poll_failed(retry_state) -> None:
        assert retry_state.outcome is not None
        log.warning("polling the queue failed: %s", retry_state.outcome.exception())
