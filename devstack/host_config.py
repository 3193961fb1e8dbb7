"""The configuration of one host of a several-host deployment, rendered from the templates in conf/hosts/:
the Consul agent (server or client), and the host's processes as supervisor programs with each one's
environment. The simulated hosts (devstack.host_stack) run exactly this; docs/DEPLOY.md
(devstack.deploy_doc) shows it rendered for real machines, so the documented configuration is the tested one.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from devstack.processes import ROOT
from servicekit import stack

TEMPLATES = ROOT / "conf" / "hosts"
DATACENTER = "dc1"
CONSUL_HTTP_ADDR = "127.0.0.1:8500"
HAZELCAST_PORT = stack.port("HAZELCAST_PORT")
# Each application host runs one instance of each service, on the single-host stack's first port.
SERVICE_PORTS = {
    "logging": stack.port("LOGGING_PORT"),
    "messages": stack.port("MESSAGES_PORT"),
    "facade": stack.port("FACADE_PORT"),
}
SERVICE_APPS = {"logging": "logging_svc", "messages": "messages_svc", "facade": "facade"}


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
    # Added to every program's environment (the simulation's small heaps).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # A program's own Consul ACL token (CONSUL_HTTP_TOKEN), by program name: none in the simulation.
    tokens: Mapping[str, str] = field(default_factory=dict)

    def at(self, host: str) -> Layout:
        """This layout with {host} filled in."""
        return Layout(
            root=self.root,
            venv_bin=self.venv_bin,
            consul_bin=self.consul_bin,
            consul_dir=self.consul_dir.format(host=host),
            data_dir=self.data_dir.format(host=host),
            log_dir=self.log_dir.format(host=host),
            run_dir=self.run_dir.format(host=host),
            extra_env=self.extra_env,
            tokens=self.tokens,
        )

    def environment(self, program: str, host: str, address: str, port: int | None) -> dict[str, str]:
        env = service_environment(host, address, port, self.extra_env)
        if program in self.tokens:
            env["CONSUL_HTTP_TOKEN"] = self.tokens[program]
        return env


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


def program(name: str, command: str, env: Mapping[str, str], priority: int, layout: Layout, **options: object) -> str:
    return render(
        "program.conf.tmpl",
        name=name,
        command=command,
        environment=_supervisor_env(env),
        priority=priority,
        stopsignal=options.get("stopsignal", "TERM"),
        stopwaitsecs=options.get("stopwaitsecs", 15),
        autostart=options.get("autostart", "false"),
        log_dir=layout.log_dir,
    )


def supervisor_config(host: str, address: str, layout: Layout, app: bool, autostart: bool = False) -> str:
    """A host's supervisord configuration: its Consul agent and, on an application host, its Hazelcast
    member and one instance of each service. Without autostart the simulation starts them in order."""
    start = "true" if autostart else "false"
    parts = [
        render("supervisord.conf.tmpl", root=layout.root, log_dir=layout.log_dir, run_dir=layout.run_dir),
        # SIGINT: a client agent leaves the cluster gracefully; a server stays a voter (it will be back).
        program(
            "consul",
            f"{layout.consul_bin} agent -config-dir={layout.consul_dir}",
            {},
            10,
            layout,
            stopsignal="INT",
            autostart=start,
        ),
    ]
    if app:
        parts.append(
            program(
                "hazelcast",
                f"{layout.venv_bin}/python -m servicekit.ops hazelcast-member --port {HAZELCAST_PORT}",
                # The several-hosts stack has no database yet (PostgreSQL with Patroni is still to come):
                # its members keep the log in memory, as before the store.
                {**layout.environment("hazelcast", host, address, None), "HAZELCAST_STORE": "off"},
                20,
                layout,
                stopwaitsecs=20,
                autostart=start,
            )
        )
        for service, port in SERVICE_PORTS.items():
            parts.append(
                program(
                    service,
                    f"{layout.venv_bin}/gunicorn -c {SERVICE_APPS[service]}/gunicorn.conf.py",
                    layout.environment(service, host, address, port),
                    30 if service != "facade" else 40,
                    layout,
                    autostart=start,
                )
            )
    return "".join(parts)
