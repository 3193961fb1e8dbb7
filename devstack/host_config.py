"""The configuration of one host of a several-host deployment, rendered from the templates in conf/hosts/:
the Consul agent (server or client), and the host's processes as supervisor programs with each one's
environment. The simulated hosts (devstack.host_stack) run exactly this; docs/DEPLOY.md
(devstack.deploy_doc) shows it rendered for real machines, so the documented configuration is the tested one.

Least privilege: supervisord runs as root only to start each program as its own unprivileged user (`user=`):
the Consul agent as CONSUL_USER, the member and the services as SERVICE_USER. No program needs a capability
(every port is above 1024). Every secret is in a file of mode 0600 owned by the user that reads it
(`secret_files`), never in supervisord.conf or a process's environment: the agent's gossip key and token
in its configuration directory, each program's Consul token in a file of its own (CONSUL_HTTP_TOKEN_FILE).
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from devstack.processes import ROOT
from servicekit import stack

TEMPLATES = ROOT / "conf" / "hosts"
DATACENTER = "dc1"
# What `consul tls cert create -server -dc dc1` names the servers' certificate and key.
SERVER_CERT = f"{DATACENTER}-server-consul-0.pem"
SERVER_KEY = f"{DATACENTER}-server-consul-0-key.pem"
CONSUL_HTTP_ADDR = "127.0.0.1:8500"
HAZELCAST_PORT = stack.port("HAZELCAST_PORT")
# Each application host runs one instance of each service, on the single-host stack's first port.
SERVICE_PORTS = {
    "logging": stack.port("LOGGING_PORT"),
    "messages": stack.port("MESSAGES_PORT"),
    "facade": stack.port("FACADE_PORT"),
}
SERVICE_APPS = {"logging": "logging_svc", "messages": "messages_svc", "facade": "facade"}
SERVICE_NAMES = {"logging": "logging-service", "messages": "messages-service", "facade": "facade-service"}
# The programs of an application host that talk to Consul, each with a token of its own.
TOKEN_PROGRAMS = ("hazelcast", *SERVICE_PORTS)
CONSUL_USER = "consul"
SERVICE_USER = "messages"
# How long a program must run to count as started (supervisor's `startsecs`): one that exits sooner failed
# its start and is tried again with a backoff; one that dies later is started again at once. Each is a
# little longer than its failed starts take: gunicorn tries a taken port 5 times, a second apart, before
# it exits; the member reads Consul, then binds its port as the JVM starts.
START_SECONDS = {"default": 3, "hazelcast": 5, "gunicorn": 7}


def render(template: str, **values: object) -> str:
    """One file of conf/hosts/ with its ${names} filled in; a name left without a value is an error."""
    return string.Template((TEMPLATES / template).read_text()).substitute({k: str(v) for k, v in values.items()})


def hcl_list(items: Sequence[str]) -> str:
    return json.dumps(list(items))


@dataclass(frozen=True)
class Layout:
    """Where things are on a host: the checkout and its virtualenv, the consul binary, the directories."""

    root: str
    venv_bin: str
    consul_bin: str
    # Each may use {host}: the simulation keeps every host's files under one run directory.
    consul_dir: str
    data_dir: str
    log_dir: str
    run_dir: str
    # Each program's Consul token, in <token_dir>/<program>.token, and the services' metrics (METRICS_DIR).
    token_dir: str
    metrics_dir: str
    # Added to every program's environment (the simulation's small heaps).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    consul_user: str = CONSUL_USER
    service_user: str = SERVICE_USER

    def at(self, host: str) -> Layout:
        """This layout with {host} filled in."""
        paths = ("consul_dir", "data_dir", "log_dir", "run_dir", "token_dir", "metrics_dir")
        return dataclasses.replace(self, **{name: getattr(self, name).format(host=host) for name in paths})

    @property
    def nginx_access_log(self) -> str:
        """The front door's access log, the service user's (nginx, run as that user, may not open supervisord's
        pipe by name as /dev/stdout)."""
        return f"{self.log_dir}/nginx-access.log"

    @property
    def nginx_dir(self) -> str:
        """The front door's directory (stackctl/front_door.py): its configuration, pid file and buffers, the
        service user's."""
        return f"{self.run_dir}/nginx"

    def token_file(self, program: str) -> str:
        return f"{self.token_dir}/{program}.token"

    def environment(self, program: str, host: str, address: str, port: int | None) -> dict[str, str]:
        env = service_environment(host, address, port, self.extra_env)
        if program in SERVICE_PORTS:
            env["METRICS_DIR"] = self.metrics_dir
        if program in TOKEN_PROGRAMS:
            env["CONSUL_HTTP_TOKEN_FILE"] = self.token_file(program)
        return env

    def user(self, program: str) -> str:
        return self.consul_user if program == "consul" else self.service_user


def secret_files(layout: Layout, app: bool) -> dict[str, str]:
    """Every file of a host that holds a secret, with the user that owns it; each is of mode 0600. The agent's
    configuration holds the gossip key (`agent.hcl`) and the agent's token (`acl.hcl`); a server's, the TLS
    key its certificate goes with; an application host's, the member's definition with the hazelcast token
    (`hazelcast.json`), and each program's token file."""
    consul, service = layout.consul_user, layout.service_user
    files = {f"{layout.consul_dir}/agent.hcl": consul, f"{layout.consul_dir}/acl.hcl": consul}
    if app:
        files[f"{layout.consul_dir}/hazelcast.json"] = consul
        files.update({layout.token_file(program): service for program in TOKEN_PROGRAMS})
    else:
        files[f"{layout.consul_dir}/{SERVER_KEY}"] = consul
    return files


def consul_config(node: str, address: str, servers: Sequence[str], gossip_key: str, data_dir: str, server: bool) -> str:
    return render(
        "consul-server.hcl.tmpl" if server else "consul-client.hcl.tmpl",
        datacenter=DATACENTER,
        node=node,
        address=address,
        servers=hcl_list(servers),
        gossip_key=gossip_key,
        data_dir=data_dir,
    )


def server_cert_command(addresses: Iterable[str]) -> list[str]:
    """`consul tls` arguments for the servers' one certificate, naming each server's address, so that the
    HTTPS API on those addresses can be checked against the CA (besides server.<dc>.consul and localhost)."""
    argv = ["cert", "create", "-server", "-dc", DATACENTER]
    for address in addresses:
        argv += ["-additional-ipaddress", address]
    return argv


def service_environment(host: str, address: str, port: int | None, extra: Mapping[str, str]) -> dict[str, str]:
    """What a service or member of `host` runs with: its local agent, the address it binds and registers,
    the host it names in its instance id, and Hazelcast's partition groups by host."""
    env = {
        "CONSUL_HTTP_ADDR": CONSUL_HTTP_ADDR,
        "SERVICE_HOST": address,
        "INSTANCE_HOST": host,
        "HAZELCAST_PARTITION_GROUPS": "host",
        **extra,
    }
    if port is not None:
        env["PORT"] = str(port)
    return env


def _supervisor_env(env: Mapping[str, str]) -> str:
    return ",".join(f'{name}="{value}"' for name, value in env.items())


@dataclass(frozen=True)
class Program:
    """One process of a host, as supervisor runs it (`supervisor_config`) and as a systemd unit (`systemd_unit`)."""

    name: str
    description: str
    command: str
    env: Mapping[str, str]
    priority: int
    stopsignal: str = "TERM"
    stopwaitsecs: int = 15
    startsecs: int = START_SECONDS["default"]
    # The programs of the same host it starts after (systemd After= and Wants=; supervisor's priority).
    after: tuple[str, ...] = ()


def host_programs(host: str, address: str, layout: Layout, app: bool) -> list[Program]:
    """A host's processes: its Consul agent and, on an application host, its Hazelcast member, the facade's
    nginx and one instance of each service."""
    # SIGINT: a client agent leaves the cluster gracefully; a server stays a voter (it will be back).
    programs = [
        Program("consul", "Consul agent", f"{layout.consul_bin} agent -config-dir={layout.consul_dir}", {}, 10,
                stopsignal="INT"),
    ]  # fmt: skip
    if not app:
        return programs
    programs.append(
        Program(
            "hazelcast",
            "Hazelcast member",
            f"{layout.venv_bin}/python -m stackctl hazelcast-member --port {HAZELCAST_PORT}",
            # The several-hosts stack has no database yet (PostgreSQL with Patroni is still to come): its
            # members keep the log in memory, as before the store.
            {**layout.environment("hazelcast", host, address, None), "HAZELCAST_STORE": "off"},
            20,
            stopwaitsecs=20,
            startsecs=START_SECONDS["hazelcast"],
            after=("consul",),
        )
    )
    # The facade's nginx, before the facade: it listens on the facade's port, the one the facade registers,
    # and passes to the facade's gunicorn on 127.0.0.1 (stackctl/front_door.py). SIGQUIT: requests in flight
    # finish.
    programs.append(
        Program(
            "nginx",
            "the facade's nginx",
            f"{layout.venv_bin}/python -m stackctl front-door --port {SERVICE_PORTS['facade']} "
            f"--home {layout.nginx_dir} --access-log {layout.nginx_access_log}",
            {"SERVICE_HOST": address, **layout.extra_env},
            35,
            stopsignal="QUIT",
        )
    )
    for service, port in SERVICE_PORTS.items():
        programs.append(
            Program(
                service,
                f"{SERVICE_APPS[service]} (gunicorn)",
                f"{layout.venv_bin}/gunicorn -c {SERVICE_APPS[service]}/gunicorn.conf.py",
                layout.environment(service, host, address, port),
                30 if service != "facade" else 40,
                startsecs=START_SECONDS["gunicorn"],
                after=("consul", "hazelcast", *(("nginx",) if service == "facade" else ())),
            )
        )
    return programs


def supervisor_config(host: str, address: str, layout: Layout, app: bool, autostart: bool = False) -> str:
    """A host's supervisord configuration (`host_programs`). Without autostart the simulation starts them in
    order."""
    parts = [render("supervisord.conf.tmpl", root=layout.root, log_dir=layout.log_dir, run_dir=layout.run_dir)]
    for program in host_programs(host, address, layout, app):
        parts.append(
            render(
                "program.conf.tmpl",
                name=program.name,
                command=program.command,
                root=layout.root,
                user=layout.user(program.name),
                environment=_supervisor_env(program.env),
                priority=program.priority,
                stopsignal=program.stopsignal,
                stopwaitsecs=program.stopwaitsecs,
                startsecs=program.startsecs,
                autostart="true" if autostart else "false",
                log_dir=layout.log_dir,
            )
        )
    return "".join(parts)


def unit_name(program: str) -> str:
    return f"messages-{program}.service"


def systemd_unit(program: Program, layout: Layout) -> str:
    """`program` as a systemd unit (conf/hosts/program.service.tmpl). Its Consul token, if it has one, is a
    credential systemd reads as root and hands the program in a directory of its own ($CREDENTIALS_DIRECTORY):
    the token file stays 0600 and root's."""
    env = dict(program.env)
    credential = ""
    if "CONSUL_HTTP_TOKEN_FILE" in env:
        credential = f"LoadCredential=consul-token:{env['CONSUL_HTTP_TOKEN_FILE']}\n"
        env["CONSUL_HTTP_TOKEN_FILE"] = "%d/consul-token"
    units = " ".join(unit_name(name) for name in program.after)
    return render(
        "program.service.tmpl",
        description=program.description,
        after=" ".join(filter(None, ["network-online.target", units])),
        wants=" ".join(filter(None, ["network-online.target", units])),
        user=layout.user(program.name),
        root=layout.root,
        environment="".join(f'Environment="{name}={value}"\n' for name, value in env.items()),
        credential=credential,
        command=program.command,
        stopsignal=program.stopsignal,
        stopwaitsecs=program.stopwaitsecs,
        log_dir=layout.log_dir,
        name=program.name,
    )
