from __future__ import annotations

import logging
import uuid

from flask import Blueprint, current_app, jsonify, request

from contracts.paging import LogCursor
from servicekit.web import (
    BadInput,
    health_response,
    read_cursor,
    read_json_object,
    read_limit,
    require_message,
    require_string,
)

from .store import AnotherMessageStored

bp = Blueprint("logging", __name__)
log = logging.getLogger(__name__)


def _log():
    return current_app.extensions["message_log"]


@bp.post("/logging")
def add_message():
    data = read_json_object(request)
    message_id = require_string(data, "id")
    msg = require_message(data)
    try:
        canonical = str(uuid.UUID(message_id))
    except ValueError:
        raise BadInput("field 'id' must be a UUID") from None
    # The id is the map key: one spelling per message, or a retried POST could store it twice.
    if canonical != message_id:
        raise BadInput("field 'id' must be a UUID in its canonical lower-case form")
    try:
        created = _log().add(message_id, msg)
    except AnotherMessageStored:
        log.warning("message %s refused: another message is already stored under its id", message_id)
        raise
    # One line per attempt that reached this instance: a retried request shows on each instance it reached.
    log.info("message %s %s", message_id, "stored" if created else "was already stored")
    return jsonify(id=message_id, msg=msg, created=created), 201 if created else 200


@bp.get("/logging")
def list_messages():
    limit = read_limit(request)
    after = read_cursor(request, "after", LogCursor.decode)
    messages, following = _log().page(after, limit)
    return jsonify(messages=messages, next=None if following is None else following.encode())


@bp.get("/health")
def health():
    # A full log is not a failed instance: it still reads, and refusing is what it should do.
    details = {"log": _log().status()}
    live = current_app.extensions.get("live_config")
    if live is not None:
        details["config"] = live.status()
    return health_response(details=details, hazelcast=_log().ready)
