"""gunicorn settings for facade. Run: gunicorn -c facade/gunicorn.conf.py (PORT picks the port, nginx's: gunicorn
listens behind it on 127.0.0.1:APP_PORT; `python -m servicekit.ops front-door --port PORT` runs nginx)."""

from facade import PORT_NAME, SERVICE_NAME
from servicekit import gunicorn_config, stack

globals().update(
    gunicorn_config.for_service(
        SERVICE_NAME, stack.port(PORT_NAME), wsgi_app="facade:create_app()", behind_front_door=True
    )
)
