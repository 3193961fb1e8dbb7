"""gunicorn settings for messages_svc. Run: gunicorn -c messages_svc/gunicorn.conf.py (PORT picks the port)."""

from servicekit import gunicorn_hooks, logs
from servicekit.settings import Settings

from messages_svc import DEFAULT_PORT, SERVICE_NAME

settings = Settings.from_env(SERVICE_NAME, DEFAULT_PORT)
logs.configure(settings.instance_id)

wsgi_app = "messages_svc:create_app()"
bind = settings.bind
# Exactly one worker: the consumed messages live in this process's memory, and a second worker
# would hold a different half of them. Threads serve concurrent GETs.
workers = 1
# gthread, with requests read by the event loop: slow or half-open clients hold no thread (see the module).
worker_class = "servicekit.workers.BufferingThreadWorker"
threads = 4
graceful_timeout = 10
# gunicorn's control socket lives at one path per user; several instances would fight over it.
control_socket_disable = True
# Seconds an idle kept-alive connection stays open (gunicorn's default, made explicit).
keepalive = 2

when_ready, on_exit = gunicorn_hooks.registration_hooks(settings)
post_worker_init = gunicorn_hooks.post_worker_init
worker_exit = gunicorn_hooks.worker_exit
