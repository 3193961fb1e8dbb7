from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from contracts.paging import decode_sequence
from servicekit.web import health_response, read_cursor, read_limit

bp = Blueprint("messages", __name__)


@bp.get("/messages")
def list_messages():
    limit = read_limit(request)
    after = read_cursor(request, "after", decode_sequence)
    messages, following = current_app.extensions["message_store"].page(after, limit)
    return jsonify(messages=messages, next=None if following is None else str(following))


@bp.get("/health")
def health():
    consumer = current_app.extensions.get("consumer")
    store = current_app.extensions["message_store"]
    return health_response(details={"store": store.status()}, hazelcast=consumer is not None and consumer.ready)
