"""gunicorn settings for facade. Run: gunicorn -c facade/gunicorn.conf.py (PORT picks the port)."""

from servicekit import gunicorn_config, stack

from facade import PORT_NAME, SERVICE_NAME

globals().update(gunicorn_config.for_service(SERVICE_NAME, stack.port(PORT_NAME), wsgi_app="facade:create_app()"))
