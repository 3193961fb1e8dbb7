from __future__ import annotations

import logging
import uuid

from flask import Blueprint, current_app, jsonify, request
from hazelcast.errors import HazelcastError

from contracts.paging import LogCursor, MessagesCursor
from servicekit.errors import RETRY_AFTER, HazelcastUnavailable, Unavailable
from servicekit.web import (
    health_response,
    read_cursor,
    read_json_object,
    read_limit,
    require_message,
)
from upstream.caller import CallFailed

from . import idempotency
from .backends import AnotherMessageLogged
from .idempotency import Answer

bp = Blueprint("facade", __name__)
log = logging.getLogger(__name__)


def _log_and_queue(message_id: str, msg: str, claim: idempotency.Claim | None) -> Answer:
    """201 when the message is in the log and on the queue; a 503 whose body says what was done when only
    part of it was; an exception (answered by the error handlers) when nothing was stored: among them a full
    queue (503 with Retry-After, looked at before the log write) and a full log (507). With a `claim` (an
    Idempotency-Key), the offer follows facade/idempotency.py's rule."""
    backends = current_app.extensions["backends"]
    # One deadline for every step: a member that does not answer holds no POST past REQUEST_DEADLINE.
    give_up_at = backends.deadline()
    backends.check_queue_room(give_up_at)
    # The facade's hops in ./scripts/trace, written before each step: the consumer may take the item
    # before the offer returns.
    log.info("message %s: logging it", message_id)
    try:
        logged = backends.log_message(message_id, msg, give_up_at)
    except CallFailed as exc:
        if not exc.maybe_done:
            raise
        # An instance that timed out or failed may still have written it: "logged" is not known.
        return Answer(503, {"error": exc.public, "id": message_id, "logged": None, "queued": False})
    if claim is not None:
        if not claim.may_offer_after(logged.created):
            # An earlier request with the key logged it, and nothing says whether it was queued.
            error = "the message was logged by an earlier request with this key; whether it was queued is not known"
            return Answer(503, {"error": error, "id": message_id, "logged": True, "queued": None})
        if not current_app.extensions["answers"].offering(claim):
            error = "the message is logged but could not be queued"
            return Answer(503, {"error": error, "id": message_id, "logged": True, "queued": False})
    log.info("message %s logged by %s; queueing it", message_id, logged.by)
    try:
        backends.queue_message(message_id, msg, give_up_at)
    except (Unavailable, HazelcastUnavailable):
        # Refused before it was sent (not connected) or by a full queue: certainly not queued.
        error = "the message is logged but could not be queued"
        return Answer(503, {"error": error, "id": message_id, "logged": True, "queued": False})
    except HazelcastError:
        # Sent, but no answer came back: it may be on the queue.
        error = "the message is logged; whether it was queued is not known"
        return Answer(503, {"error": error, "id": message_id, "logged": True, "queued": None})
    return Answer(201, {"id": message_id, "msg": msg, "logged_by": logged.by})


@bp.post("/facade")
def post_message():
    """201 means the message is in the log (a Hazelcast map with a backup copy) and on the queue."""
    key = idempotency.key_of(request.headers.get(idempotency.HEADER))
    msg = require_message(read_json_object(request))
    if key is None:
        return _answered(_log_and_queue(str(uuid.uuid4()), msg, None))
    answers: idempotency.AnswerStore = current_app.extensions["answers"]
    try:
        claim = answers.claim(key, idempotency.fingerprint(msg))
    except idempotency.KeyReused:
        return jsonify(error=f"this {idempotency.HEADER} came with another message"), 422
    except idempotency.KeyInFlight:
        return jsonify(error=f"a request with this {idempotency.HEADER} is being answered; retry later"), 409
    if isinstance(claim, Answer):
        return _answered(claim)
    try:
        answer = _log_and_queue(idempotency.message_id(key), msg, claim)
    except AnotherMessageLogged:
        answers.forget(claim)
        error = f"this {idempotency.HEADER} came with another message: the log holds a different one under its id"
        return jsonify(error=error), 422
    except BaseException:
        # Raised before any offer (the offer's own errors are answers): the key keeps its message.
        answers.answered(claim, None)
        raise
    answers.answered(claim, answer)
    return _answered(answer)


def _answered(answer: Answer):
    headers = {}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    elif answer.status != 201:
        log.warning("answering %s: %s", answer.status, answer.body)
    if answer.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER)
    return jsonify(answer.body), answer.status, headers


@bp.get("/facade")
def get_messages():
    limit = read_limit(request)
    after = read_cursor(request, "after", LogCursor.decode)
    messages_after = read_cursor(request, "messages_after", MessagesCursor.decode)
    return jsonify(current_app.extensions["backends"].read_page(limit, after, messages_after))


@bp.get("/health")
def health():
    # Consul being unreachable does not fail the check: requests are served from the last known
    # instances for at most servicekit.discovery.STALE_LIMIT. The details say so (`stale_since`).
    return health_response(
        details={
            "discovery": current_app.extensions["backends"].status(),
            "config": current_app.extensions["live_config"].status(),
        },
        hazelcast=current_app.extensions["hazelcast"].connected,
    )
