"""The references the facade is measured against, under the facade's own gunicorn settings.

- `bare`: POST /echo validates the JSON the way the facade does and answers 201. The cost of a Flask
  request under this gunicorn setup.
- `chain`: POST /chain does the same, then POSTs the document to a `bare` instance (REF_DOWNSTREAM) with
  a pooled requests.Session. The floor of "one request in, one service call out".
- `design`: the facade's design written the naive way. POST /design takes the message without
  validation, POSTs it to one of the hard-coded /design-log instances (REF_LOGGING, comma-separated
  base URLs: no discovery, no retries), which put_if_absent it into the map in the log's entry format
  (contracts.log_entry);
  then it offers the item to the queue the messages instances consume. The same writes on the same
  members as the facade, minus everything the facade adds around them.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

import hazelcast
import requests
from flask import Blueprint, Flask, current_app, jsonify, request

from contracts import queue_item
from contracts.log_entry import encode
from servicekit import hazelcast_reactor_fix
from servicekit.settings import Settings
from servicekit.web import configure_app, read_json_object, require_message

bp = Blueprint("reference", __name__)


@bp.post("/echo")
def echo():
    msg = require_message(read_json_object(request))
    return jsonify(id=str(uuid.uuid4()), msg=msg), 201


@bp.post("/chain")
def chain():
    msg = require_message(read_json_object(request))
    settings: Settings = current_app.extensions["settings"]
    answer = current_app.extensions["http"].post(
        current_app.extensions["downstream"],
        json={"msg": msg},
        timeout=(settings.connect_timeout, settings.read_timeout),
    )
    answer.raise_for_status()
    return jsonify(answer.json()), 201


@bp.post("/design")
def design():
    msg = request.get_json(force=True)["msg"]
    message_id = str(uuid.uuid4())
    settings: Settings = current_app.extensions["settings"]
    answer = current_app.extensions["http"].post(
        f"{random.choice(current_app.extensions['logging'])}/design-log",
        json={"id": message_id, "msg": msg},
        timeout=(settings.connect_timeout, settings.read_timeout),
    )
    answer.raise_for_status()
    current_app.extensions["hazelcast"].get_queue(os.environ["REF_QUEUE"]).offer(queue_item.encode(message_id, msg))
    return jsonify(id=message_id, msg=msg), 201


@bp.post("/design-log")
def design_log():
    data = request.get_json(force=True)
    log_map = current_app.extensions["hazelcast"].get_map(os.environ["REF_MAP"])
    log_map.put_if_absent(data["id"], encode(data["msg"], time.time_ns()))
    return jsonify(id=data["id"], msg=data["msg"]), 201


class NaiveHazelcast:
    """One client per worker, built on first use (after gunicorn's fork), with the members and names
    from the environment (REF_HZ_CLUSTER, REF_HZ_MEMBERS, REF_MAP, REF_QUEUE). The client options that
    change the cost of a write are the service's (servicekit/hz.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: hazelcast.HazelcastClient | None = None

    def _get(self) -> hazelcast.HazelcastClient:
        with self._lock:
            if self._client is None:
                hazelcast_reactor_fix.apply()
                self._client = hazelcast.HazelcastClient(
                    cluster_name=os.environ["REF_HZ_CLUSTER"],
                    cluster_members=os.environ["REF_HZ_MEMBERS"].split(","),
                    backup_ack_to_client_enabled=False,
                )
            return self._client

    def get_map(self, name: str):
        return self._get().get_map(name).blocking()

    def get_queue(self, name: str):
        return self._get().get_queue(name).blocking()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env("reference", 0)
    app = Flask(__name__)
    configure_app(app, settings)
    app.extensions["settings"] = settings
    http = requests.Session()
    # As in the facade: no proxy or netrc lookups from the environment on every request.
    http.trust_env = False
    app.extensions["http"] = http
    app.extensions["downstream"] = os.environ.get("REF_DOWNSTREAM", "")
    app.extensions["logging"] = [url for url in os.environ.get("REF_LOGGING", "").split(",") if url]
    app.extensions["hazelcast"] = NaiveHazelcast()
    app.register_blueprint(bp)
    return app
