"""POST /facade with an `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header): the same key
within the window gets the first 201 back and stores nothing new; the key with another message is 422.

The message id is derived from the key, so every request with the key writes the same log entry: POST
/logging stores an id once, answers "already stored" to the same message and refuses another one with 409
(the facade answers that 422 too). A record per key in a Hazelcast map beside the log (every facade worker
and instance sees it) holds the message's fingerprint and how far its requests got:

    claimed  ->  offering  ->  answered
    logging      queueing      201: replayed for the window; any other answer: a retry with the same
                               message takes the record over and finishes the work (a retry with another
                               message is 422: the fingerprint outlives a refusal)

The record lives for the window (IDEMPOTENCY_WINDOW) from its last write. `claimed` and `offering` carry a
lease deadline, the longest a request takes: until it passes, another request with the key is 409; after
it, the request is taken to have died. Every change of a record is a compare-and-set on the record as
read (replace_if_same), so two requests never both hold a key, and a request that finds its record taken
over does not offer. Hazelcast's replace drops an entry's TTL: set_ttl puts the window back (should that
call fail, the record outlives its window, which changes no answer: the log keeps the id for ever too).

The rule: only an answer that said `"queued": null` may ever lead to a second queue item. A request may
offer the message when
  - its own log write created the entry: no earlier request offered it, since an offer only follows a
    log write of the same id and the log never drops an entry; or
  - its record allows it (`may_offer`): an earlier request with the key answered `"logged": true` without
    a 201. Such an answer comes after the offer was decided, and either says `"queued": null` or follows a
    request that offered nothing, or learnt for certain that its offer failed, while it had that right.
Otherwise the log held the message before this request and nothing says whether it was queued: the
answer is 503 `"logged": true, "queued": null`, and that answer gives the next retry the right.

The paths, one test each in tests/unit/test_idempotency_key.py:
  1. No record: claim, log, offer, 201, kept and replayed. (test_the_first_201_is_replayed...)
  2. A record with another fingerprint, in any phase: 422, nothing stored. (test_after_a_refusal...)
  3. `claimed` or `offering` within its lease: 409. (test_a_claim_whose_request_died_before_the_offer...,
     test_a_201_whose_answer_could_not_be_kept...)
  4. `answered` without a 201: taken over by the same message, which then logs and offers under the rule.
     (test_after_a_refusal..., test_after_logged_null...)
  5. `claimed` past its lease: its request never wrote `offering`, so never offered: taken over.
     (test_a_claim_whose_request_died_before_the_offer...)
  6. `offering` past its lease (its request died, or failed after the offer was sent): it may have
     offered. Answered 503 `"queued": null` without an offer, and recorded.
     (test_a_201_whose_answer_could_not_be_kept..., test_an_error_after_the_offer_was_sent...)
  7. `offering` cannot be written: no offer; 503 `"logged": true, "queued": false`.
     (test_when_the_offering_cannot_be_written...)
  8. The answer cannot be kept after the offer (a failed keep after a 201): the record stays `offering`,
     so 3 and then 6, never a second offer. (test_a_201_whose_answer_could_not_be_kept...)
  9. No record (the window passed), and the log already holds the message: 503 `"queued": null`.
     (test_a_key_whose_window_passed...)
 10. The map out of reach: nothing is kept and nothing refused; the request offers only when its log
     write created the entry, else 9. (test_a_key_answered_while_the_map_was_out_of_reach...)
 11. The log holds another message under the id (the window passed, or the map was out of reach): 422
     from logging_svc's 409; the record goes, so the key is the logged message's again.
     (test_a_key_reused_with_another_message_once_its_record_is_gone...)
A log write that logging_svc answered "already stored" on a retry within the same request (the first
attempt stored it and its connection dropped) cannot be told from 9, and is answered the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from hazelcast.errors import HazelcastError

from servicekit.errors import BadInput, HazelcastUnavailable
from servicekit.hz import Bounded, Hazelcast
from servicekit.kvconfig import SharedConfig

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# The namespace of the message ids derived from keys: the same key always gives the same id.
_NAMESPACE = uuid.UUID("6f1d8a52-5c1e-4c8e-9d55-1f0f1b6c2a7e")
# The draft makes the key a structured-field string ("..."); a bare token is taken too. Visible ASCII
# only, so a key is one string whatever the client's encoding, and short enough to be a map key.
_KEY = re.compile(r'"?([\x21\x23-\x7e]{1,255})"?', re.ASCII)
_STORE_ERRORS = (HazelcastUnavailable, HazelcastError)

CLAIMED, OFFERING, ANSWERED = "claimed", "offering", "answered"


class KeyReused(Exception):
    """The key came with another message (422 in the draft)."""


class KeyInFlight(Exception):
    """A request with the same key is being answered right now (409 in the draft)."""


def key_of(header: str | None) -> str | None:
    if header is None:
        return None
    match = _KEY.fullmatch(header.strip())
    if match is None:
        raise BadInput(f"{HEADER} must be 1 to 255 visible ASCII characters, optionally in double quotes")
    return match[1]


def message_id(key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, key))


def fingerprint(msg: str) -> str:
    return hashlib.sha256(msg.encode()).hexdigest()


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict
    # The kept answer of an earlier request, sent again (Idempotent-Replayed: true).
    replayed: bool = False


@dataclass
class Claim:
    """A request's hold on its key. `record` is the record as this request last wrote it (None when the map
    was out of reach: nothing is kept); `may_offer` says whether the message may be offered although the
    log already held it (the rule in the module's docstring)."""

    key: str
    fingerprint: str
    may_offer: bool
    record: str | None
    offering: bool = False

    def may_offer_after(self, created: bool) -> bool:
        return created or self.may_offer


def answers_map_name(shared: SharedConfig) -> str:
    """The answers' map, named after the log's (config/logging/map in Consul KV)."""
    return f"{shared.map_name}.idempotency"


class AnswerStore:
    """key -> record in the idempotency map (the module's docstring). `clock`: the wall clock the lease
    deadlines are written in, read by every facade instance; a host whose clock runs ahead takes a lease for
    passed early, which costs a 409 less or a `"queued": null` more, never a second offer."""

    def __init__(self, hz: Hazelcast, window: float, lease: float, clock: Callable[[], float] = time.time):
        self._hz = hz
        self._window = window
        self._lease = lease
        self._clock = clock

    def claim(self, key: str, fp: str) -> Claim | Answer:
        """The request's claim on the key, or the answer it gets without doing the work (a kept 201, or
        `"queued": null` after a request that died while offering). KeyReused or KeyInFlight when it gets
        neither."""
        fresh = self._record(fp, CLAIMED, may_offer=False)
        try:
            found = self._map().put_if_absent(key, fresh, ttl=self._window)
        except _STORE_ERRORS as exc:
            log.warning("idempotency keys out of reach (%s); answering without them", exc)
            return Claim(key, fp, may_offer=False, record=None)
        if found is None:
            return Claim(key, fp, may_offer=False, record=fresh)
        first = json.loads(found)
        if first["fingerprint"] != fp:
            raise KeyReused
        # A record written before phases existed: a claim (in flight until its own short TTL), or a 201.
        phase = first.get("phase") or (CLAIMED if first.get("status") is None else ANSWERED)
        if phase == ANSWERED and first.get("status") == 201:
            return Answer(201, first["body"], replayed=True)
        if phase in (CLAIMED, OFFERING) and self._clock() < first.get("lease_until", math.inf):
            raise KeyInFlight
        if phase == OFFERING:
            # Its request may have offered the message and died before it could answer.
            answer = Answer(
                503,
                {
                    "error": "the message is logged; whether an earlier request with this key queued it is not known",
                    "id": message_id(key),
                    "logged": True,
                    "queued": None,
                },
            )
            try:
                if not self._swap(key, found, self._record(fp, ANSWERED, may_offer=True, status=503)):
                    raise KeyInFlight
            except _STORE_ERRORS as exc:
                # Whether it was kept or not, the answer is true; unkept, the next retry answers it again.
                log.warning("could not keep the answer to idempotency key %r: %s", key, exc)
            return answer
        # A refusal, or a claim whose request died before it offered: this request does the work.
        claim = Claim(key, fp, may_offer=first.get("may_offer", False), record=None)
        taken = self._record(fp, CLAIMED, may_offer=claim.may_offer)
        try:
            if not self._swap(key, found, taken):
                raise KeyInFlight
        except _STORE_ERRORS as exc:
            # Whether the record is ours is not known: answer as without the map.
            log.warning("could not take over idempotency key %r (%s); answering without it", key, exc)
            return Claim(key, fp, may_offer=False, record=None)
        claim.record = taken
        return claim

    def offering(self, claim: Claim) -> bool:
        """Mark the claim as offering, before the offer; False when that failed or the record was taken
        over meanwhile: then nothing may be offered. True without a record to mark (the map out of reach)."""
        if claim.record is None:
            return True
        marked = self._record(claim.fingerprint, OFFERING, may_offer=claim.may_offer)
        try:
            if not self._swap(claim.key, claim.record, marked):
                log.warning("idempotency key %r was taken over before the offer: not offering", claim.key)
                return False
        except _STORE_ERRORS as exc:
            log.warning("could not mark idempotency key %r as offering (%s): not offering", claim.key, exc)
            return False
        claim.record = marked
        claim.offering = True
        return True

    def answered(self, claim: Claim, answer: Answer | None) -> None:
        """Keep how the request ended: its answer (None: an error answered by the error handlers, before any
        offer). A 201 is replayed; after any other answer a retry with the same message takes over, with the
        right to offer when this answer said `"logged": true`."""
        if answer is None and claim.offering:
            # An error after the offer was sent: it may have landed. The record stays `offering`, so a retry
            # after the lease answers `"queued": null`.
            return
        may_offer = claim.may_offer or (
            answer is not None and answer.status != 201 and answer.body.get("logged") is True
        )
        kept = self._record(
            claim.fingerprint,
            ANSWERED,
            may_offer=may_offer,
            status=None if answer is None else answer.status,
            body=answer.body if answer is not None and answer.status == 201 else None,
        )
        self._finish(claim, lambda m: self._swap(claim.key, claim.record, kept, m), "keep the answer to")

    def forget(self, claim: Claim) -> None:
        """Drop the record: the log holds another message under the key's id, so the key belongs to that
        message (a retry of it would otherwise be refused by this request's fingerprint)."""
        self._finish(claim, lambda m: m.remove_if_same(claim.key, claim.record), "forget")

    def _finish(self, claim: Claim, change: Callable, what: str) -> None:
        if claim.record is None:
            return
        try:
            if not change(self._map()):
                log.warning("idempotency key %r was taken over (its lease passed): did not %s it", claim.key, what)
        except _STORE_ERRORS as exc:
            log.warning("could not %s idempotency key %r: %s", what, claim.key, exc)

    def _map(self) -> Bounded:
        return self._hz.get_map(answers_map_name(self._hz.shared_config()))

    def _swap(self, key: str, old: str | None, new: str, idempotency_map=None) -> bool:
        m = idempotency_map or self._map()
        if not m.replace_if_same(key, old, new):
            return False
        try:
            m.set_ttl(key, self._window)
        except _STORE_ERRORS as exc:
            log.warning("the record of idempotency key %r outlives its window: %s", key, exc)
        return True

    def _record(self, fp: str, phase: str, may_offer: bool, status: int | None = None, body: dict | None = None) -> str:
        record: dict = {"fingerprint": fp, "phase": phase, "may_offer": may_offer}
        if phase == ANSWERED:
            record.update(status=status, body=body)
        else:
            record["lease_until"] = self._clock() + self._lease
        return json.dumps(record)
