"""gunicorn settings for logging_svc. Run: gunicorn -c logging_svc/gunicorn.conf.py (PORT picks the port)."""

from servicekit import gunicorn_config, stack

from logging_svc import PORT_NAME, SERVICE_NAME

globals().update(gunicorn_config.for_service(SERVICE_NAME, stack.port(PORT_NAME), wsgi_app="logging_svc:create_app()"))
