"""POST /facade with an `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header): the same key
within the window gets the first answer back and stores nothing new.

Two things make a retry safe. The message id is derived from the key, so a retry writes the log entry it
may already have written (POST /logging is idempotent by id): the log holds the message once even when
the first request died half-way, or when the answers could not be kept. And the first answer is kept in a
Hazelcast map beside the log (key -> answer, with a TTL), so every facade worker and instance replays it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass

from hazelcast.errors import HazelcastError

from servicekit.errors import HazelcastUnavailable
from servicekit.hz import Hazelcast
from servicekit.web import BadInput

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# The namespace of the message ids derived from keys: the same key always gives the same id.
_NAMESPACE = uuid.UUID("6f1d8a52-5c1e-4c8e-9d55-1f0f1b6c2a7e")
# The draft makes the key a structured-field string ("..."); a bare token is taken too. Visible ASCII
# only, so a key is one string whatever the client's encoding, and short enough to be a map key.
_KEY = re.compile(r'"?([\x21\x23-\x7e]{1,255})"?', re.ASCII)
_STORE_ERRORS = (HazelcastUnavailable, HazelcastError)


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


class AnswerStore:
    """key -> {"fingerprint", "status", "body"}; status null while the first request is being answered.

    That claim lives `lease` seconds (a facade that died mid-request must not block its key for long);
    a kept answer lives `window` seconds. When the map cannot be reached, nothing is kept and nothing is
    refused: the derived message id still keeps the log from holding a message twice.
    """

    def __init__(self, hz: Hazelcast, window: float, lease: float):
        self._hz = hz
        self._window = window
        self._lease = lease

    def claim(self, key: str, fp: str) -> Answer | None:
        """None when this request is the first with the key (or the store is out of reach); the kept answer
        of the first one otherwise. KeyReused or KeyInFlight when it cannot be replayed."""
        claim = json.dumps({"fingerprint": fp, "status": None})
        try:
            found = self._hz.idempotency_map().put_if_absent(key, claim, ttl=self._lease)
        except _STORE_ERRORS as exc:
            log.warning("idempotency keys out of reach (%s); answering without them", exc)
            return None
        if found is None:
            return None
        first = json.loads(found)
        if first["fingerprint"] != fp:
            raise KeyReused
        if first["status"] is None:
            raise KeyInFlight
        return Answer(first["status"], first["body"])

    def keep(self, key: str, fp: str, answer: Answer) -> None:
        kept = json.dumps({"fingerprint": fp, "status": answer.status, "body": answer.body})
        try:
            self._hz.idempotency_map().put(key, kept, ttl=self._window)
        except _STORE_ERRORS as exc:
            log.warning("could not keep the answer to idempotency key %r: %s", key, exc)

    def release(self, key: str) -> None:
        """Forget the claim, so that a retry does the work again (under the same message id)."""
        try:
            self._hz.idempotency_map().remove(key)
        except _STORE_ERRORS as exc:
            log.warning("could not release idempotency key %r (its claim expires by itself): %s", key, exc)
