"""nginx at the facade's front door: the configuration of conf/nginx.conf.tmpl for one facade, and the
command that runs it.

gunicorn's own deployment advice is a buffering proxy in front: its threads read requests from the socket,
so a client that sends a byte every few seconds, or stops half-way, holds a thread for as long as it likes,
and eight such clients (2 workers x 4 threads) stop the facade. nginx reads every request whole in its
event loop before gunicorn sees it, refuses what the facade would refuse without reading it (413, 431,
400, each as JSON with an X-Request-ID), and takes the answer as fast as gunicorn writes it.

The facade registers nginx's address and port in Consul (PORT stays the public port, the one in its
instance id; METRICS_PORT stays the gunicorn master's): Consul's check of /health, ./scripts/status and
anything that finds a facade in Consul go through the front door, as clients do, so a dead nginx or a dead
gunicorn both turn the instance critical. gunicorn listens behind it on a port of its own, on 127.0.0.1
only (APP_PORT, by default PORT + APP_PORT_OFFSET of conf/stack.env: 10080 for 8080), which only nginx
calls.

    python -m stackctl front-door --port 8080 --home run/nginx-8080

renders HOME/nginx.conf (listening where gunicorn would: SERVICE_HOST and, when that is another address,
127.0.0.1; MAX_BODY_BYTES and APP_PORT from the environment, as the facade reads them) and replaces itself
with nginx, in the foreground, logging to stderr and its access log to stdout; its pid file and buffers are
in HOME. nginx runs as the user that starts it (no port below 1024, so no root and no /var/lib/nginx);
started as root, its worker would drop to nginx's default user.
"""

from __future__ import annotations

import argparse
import os
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from servicekit import stack
from servicekit.settings import SettingsError, app_port, listen_addresses, max_body_bytes_from_env, service_host

TEMPLATE = stack.ROOT / "conf" / "nginx.conf.tmpl"
# Seconds a client has for a request's head, counted from its first byte, and for each read of its body or
# write of its answer: the buffering worker's bound, 5 s for a whole request, as far as nginx can count it.
CLIENT_TIMEOUT = 5
# Seconds a closing connection is drained for (gunicorn's close_graceful waited as long).
LINGER = 2
# Where Debian's package puts nginx, on no user's PATH but root's (scripts/lib.sh looks in the same places).
DEBIAN_NGINX = "/usr/sbin/nginx"
CONFIG_NAME = "nginx.conf"
# The access log's default. nginx opens it by name: a user that supervisord switched to (`user=`) may not open
# supervisord's pipe that way, and logs to a file of its own instead (--access-log).
STDOUT = "/dev/stdout"


class _Template(string.Template):
    # nginx's own variables are $names: the template's are %{names}.
    delimiter = "%"


@dataclass(frozen=True)
class FrontDoor:
    """nginx for one facade: the addresses it listens on, the gunicorn it passes to (`host:port`), the
    directory of its configuration, pid file and buffers, and MAX_BODY_BYTES."""

    listen: Sequence[str]
    upstream: str
    home: Path
    max_body_bytes: int
    access_log: str = STDOUT

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    def config(self) -> str:
        return _Template(TEMPLATE.read_text()).substitute(
            listen="\n".join(f"        listen {address};" for address in self.listen),
            upstream=self.upstream,
            home=self.home,
            max_body_bytes=self.max_body_bytes,
            client_timeout=CLIENT_TIMEOUT,
            linger=LINGER,
            access_log=self.access_log,
        )

    def write(self) -> Path:
        """The configuration in HOME (made if need be), ready for `command`."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        return self.config_path

    def command(self, env: Mapping[str, str] | None = None) -> list[str]:
        # -e: nginx opens its error log before it reads the configuration; stderr, not a file of root's.
        return [nginx_binary(env), "-e", "stderr", "-c", str(self.config_path)]


def for_facade(
    port: int, home: Path | str, env: Mapping[str, str] | None = None, access_log: str = STDOUT
) -> FrontDoor:
    """The front door of the facade whose public port is `port`, with the facade's environment (SERVICE_HOST,
    APP_PORT, MAX_BODY_BYTES)."""
    env = os.environ if env is None else env
    return FrontDoor(
        listen_addresses(service_host(env), port),
        f"127.0.0.1:{app_port(port, env)}",
        Path(home),
        max_body_bytes_from_env(env),
        access_log,
    )


def nginx_binary(env: Mapping[str, str] | None = None) -> str:
    """NGINX_BIN, else nginx on PATH, else Debian's; as scripts/lib.sh's nginx_bin."""
    env = os.environ if env is None else env
    found = env.get("NGINX_BIN") or shutil.which("nginx", path=env.get("PATH")) or DEBIAN_NGINX
    if not os.access(found, os.X_OK):
        raise SettingsError(f"no nginx at {found}: run ./scripts/install (Debian's nginx package)")
    return found


def _run(args: argparse.Namespace) -> int:
    door = for_facade(args.port, Path(args.home).resolve(), access_log=args.access_log)
    door.write()
    command = door.command()
    os.execv(command[0], command)


def add_commands(sub) -> None:
    """The front-door subcommand of stackctl."""
    parser = sub.add_parser("front-door", help="run nginx in front of the facade whose public port is PORT")
    parser.add_argument("--port", type=int, required=True, help="the facade's public port (its PORT)")
    parser.add_argument("--home", required=True, help="nginx's directory: configuration, pid file, buffers")
    parser.add_argument("--access-log", default=STDOUT, help=f"where nginx writes its access log ({STDOUT})")
    parser.set_defaults(func=_run)
