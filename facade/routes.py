from __future__ import annotations

import uuid

from flask import Blueprint, current_app, jsonify, request

from servicekit.paging import LogCursor, MessagesCursor
from servicekit.web import health_response, read_cursor, read_json_object, read_limit, require_message

bp = Blueprint("facade", __name__)


@bp.post("/facade")
def post_message():
    """201 means the message is in the log (a Hazelcast map with a backup copy) and on the queue."""
    msg = require_message(read_json_object(request))
    message_id = str(uuid.uuid4())
    backends = current_app.extensions["backends"]
    logged_by = backends.log_message(message_id, msg)
    backends.queue_message(message_id, msg)
    return jsonify(id=message_id, msg=msg, logged_by=logged_by), 201


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
        details={"discovery": current_app.extensions["backends"].status()},
        hazelcast=current_app.extensions["hazelcast"].connected,
    )
