"""Consul ACLs for the simulated hosts, as docs/DEPLOY.md tells an operator to set them up: default deny,
bootstrapped once, one policy and token per agent (conf/hosts/acl-agent-policy.hcl.tmpl) and one per
service on each host (conf/hosts/acl-service-policy.hcl.tmpl), the same templates the documentation shows.

The tokens' secrets are chosen before any agent starts (uuid4, kept in the run directory as acl.json), so
each agent's acl.hcl and each program's CONSUL_HTTP_TOKEN can be written with the rest of the configuration;
`ensure` then makes Consul know them, with exactly those secrets (`SecretID`, the API's form of
`consul acl token create -secret`). The management token `consul acl bootstrap` returns is kept there too:
a restarted simulation keeps its servers' data, and ACLs bootstrap only once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path

import requests

from devstack.host_config import TOKEN_PROGRAMS, render
from servicekit.private_files import write_private

# The programs of an application host that talk to Consul, and the service each registers.
PROGRAM_SERVICES = {
    "hazelcast": "hazelcast",
    "logging": "logging-service",
    "messages": "messages-service",
    "facade": "facade-service",
}
assert tuple(PROGRAM_SERVICES) == TOKEN_PROGRAMS
TIMEOUT = 10.0


def agent_policy(node: str) -> tuple[str, str]:
    return f"agent-{node}", render("acl-agent-policy.hcl.tmpl", node=node)


def service_policy(service: str) -> tuple[str, str]:
    return f"service-{service}", render("acl-service-policy.hcl.tmpl", service=service)


class Tokens:
    """Every secret of one simulation: `agent` by host, `programs` by host then program, `management`."""

    def __init__(self, path: Path, hosts: Iterable[str], apps: Iterable[str]):
        self.path = path
        state = json.loads(path.read_text()) if path.exists() else {}
        self.management: str | None = state.get("management")
        self.agent: dict[str, str] = state.get("agent", {})
        self.programs: dict[str, dict[str, str]] = state.get("programs", {})
        for host in hosts:
            self.agent.setdefault(host, str(uuid.uuid4()))
        for host in apps:
            mine = self.programs.setdefault(host, {})
            for program in PROGRAM_SERVICES:
                mine.setdefault(program, str(uuid.uuid4()))
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(
            self.path, json.dumps({"management": self.management, "agent": self.agent, "programs": self.programs})
        )


class AclError(RuntimeError):
    pass


def _call(method: str, url: str, token: str | None, ca_file: Path, body: dict | None = None) -> requests.Response:
    """One call over HTTPS, checked against the simulation's CA: the tokens never cross the network in clear."""
    headers = {"X-Consul-Token": token} if token else {}
    return requests.request(method, url, json=body, headers=headers, timeout=TIMEOUT, verify=str(ca_file))


def bootstrap(base: str, tokens: Tokens, ca_file: Path) -> str:
    """The management token: bootstrapped now, or the one kept from the first start."""
    if tokens.management is None:
        response = _call("PUT", f"{base}/v1/acl/bootstrap", None, ca_file)
        if response.status_code == 403:
            raise AclError(
                f"consul acl bootstrap failed ({response.status_code}: {response.text.strip()}); a simulation "
                f"bootstrapped before keeps its management token in {tokens.path}"
            )
        response.raise_for_status()  # e.g. ACLs not ready on a new leader: eventually() tries again
        tokens.management = response.json()["SecretID"]
        tokens.save()
    return tokens.management


def ensure(base: str, tokens: Tokens, ca_file: Path) -> None:
    """Every policy and token of the simulation known to Consul (`base`: a server's HTTPS API); what exists
    already is left alone."""
    management = bootstrap(base, tokens, ca_file)
    response = _call("GET", f"{base}/v1/acl/policies", management, ca_file)
    response.raise_for_status()
    existing = {policy["Name"] for policy in response.json()}
    wanted = [agent_policy(node) for node in tokens.agent]
    wanted += [service_policy(service) for service in PROGRAM_SERVICES.values()]
    for name, rules in wanted:
        if name not in existing:
            _call(
                "PUT", f"{base}/v1/acl/policy", management, ca_file, {"Name": name, "Rules": rules}
            ).raise_for_status()
    secrets = [(f"agent {node}", agent_policy(node)[0], secret) for node, secret in tokens.agent.items()]
    for host, programs in tokens.programs.items():
        for program, secret in programs.items():
            service = PROGRAM_SERVICES[program]
            secrets.append((f"{service} on {host}", service_policy(service)[0], secret))
    for description, policy, secret in secrets:
        if _call("GET", f"{base}/v1/acl/token/self", secret, ca_file).status_code == 200:
            continue
        body = {"SecretID": secret, "Description": description, "Policies": [{"Name": policy}]}
        _call("PUT", f"{base}/v1/acl/token", management, ca_file, body).raise_for_status()
