"""gunicorn settings for logging_svc. Run: gunicorn -c logging_svc/gunicorn.conf.py (PORT picks the port)."""

from servicekit import gunicorn_config

from logging_svc import DEFAULT_PORT, SERVICE_NAME

globals().update(gunicorn_config.for_service(SERVICE_NAME, DEFAULT_PORT, wsgi_app="logging_svc:create_app()"))
