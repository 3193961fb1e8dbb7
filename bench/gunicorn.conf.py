"""gunicorn settings for the references: the services' worker settings, without their Consul hooks.

Run: PORT=... [REF_DOWNSTREAM=http://.../echo] gunicorn -c bench/gunicorn.conf.py
"""

from servicekit import gunicorn_config
from servicekit.settings import Settings

wsgi_app = "bench.reference:create_app()"
# The facade's settings (it keeps the shared ones), so the comparison stays like for like.
globals().update(gunicorn_config.base(Settings.from_env("reference", 0)))
