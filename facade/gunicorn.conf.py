"""gunicorn settings for facade. Run: gunicorn -c facade/gunicorn.conf.py (PORT picks the port)."""

from servicekit import gunicorn_config

from facade import DEFAULT_PORT, SERVICE_NAME

globals().update(gunicorn_config.for_service(SERVICE_NAME, DEFAULT_PORT, wsgi_app="facade:create_app()"))
