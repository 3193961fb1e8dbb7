"""gunicorn settings for facade. Run: gunicorn -c facade/gunicorn.conf.py (PORT picks the port, nginx's: gunicorn
listens behind it on 127.0.0.1:APP_PORT; `python -m stackctl front-door --port PORT` runs nginx)."""

from facade import PORT_NAME, SERVICE_NAME
from facade.settings import FacadeSettings
from servicekit import gunicorn_hooks, stack

globals().update(
    gunicorn_hooks.for_service(
        SERVICE_NAME,
        stack.port(PORT_NAME),
        wsgi_app="facade:create_app()",
        settings_class=FacadeSettings,
        behind_front_door=True,
    )
)
