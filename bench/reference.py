"""The references the facade is measured against, under the facade's own gunicorn settings.

- `bare`: POST /echo validates the JSON the way the facade does and answers 201. The cost of a Flask
  request under this gunicorn setup.
- `chain`: POST /chain does the same, then POSTs the document to a `bare` instance (REF_DOWNSTREAM) with
  a pooled requests.Session. The floor of "one request in, one service call out".
"""

from __future__ import annotations

import os
import uuid

import requests
from flask import Blueprint, Flask, current_app, jsonify, request

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
    app.register_blueprint(bp)
    return app
