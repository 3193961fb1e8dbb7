from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from servicekit.web import health_response

bp = Blueprint("messages", __name__)


@bp.get("/messages")
def list_messages():
    return jsonify(messages=current_app.extensions["message_store"].snapshot())


@bp.get("/health")
def health():
    consumer = current_app.extensions.get("consumer")
    store = current_app.extensions["message_store"]
    return health_response(details={"store": store.status()}, hazelcast=consumer is not None and consumer.ready)
