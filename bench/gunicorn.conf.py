"""gunicorn settings for the references: the facade's own worker settings, without its Consul hooks.

Run: PORT=... [REF_DOWNSTREAM=http://.../echo] gunicorn -c bench/gunicorn.conf.py
"""

import runpy
from pathlib import Path

from servicekit import logs
from servicekit.settings import Settings

_facade = runpy.run_path(str(Path(__file__).resolve().parent.parent / "facade" / "gunicorn.conf.py"))
settings = Settings.from_env("reference", 0)
logs.configure(settings.instance_id)

wsgi_app = "bench.reference:create_app()"
bind = settings.bind
# Taken from the facade's file rather than restated, so the comparison stays like for like.
workers = _facade["workers"]
worker_class = _facade["worker_class"]
threads = _facade["threads"]
graceful_timeout = _facade["graceful_timeout"]
control_socket_disable = _facade["control_socket_disable"]
keepalive = _facade["keepalive"]
