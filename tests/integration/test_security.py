"""What the running stack exposes: loopback listeners only, and errors that name no internals."""

from __future__ import annotations

import ipaddress
import socket

import psutil
import requests

TIMEOUT = 10


def listening_addresses(pid: int) -> set[str]:
    process = psutil.Process(pid)
    return {
        conn.laddr.ip
        for p in [process, *process.children(recursive=True)]
        for conn in p.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    # Java listens on IPv6 sockets: 127.0.0.1 shows as ::ffff:127.0.0.1.
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_every_service_member_and_agent_listens_on_loopback_only(stack):
    pids = {s.instance_id: s.proc.pid for s in stack.instances}
    pids.update({proc.name: proc.pid for proc in stack.cluster.members.values()})
    pids["consul"] = stack.agent.proc.pid
    for name, pid in pids.items():
        addresses = listening_addresses(pid)
        assert addresses, f"{name} listens nowhere"
        assert all(is_loopback(a) for a in addresses), (name, addresses)


def test_error_responses_name_no_host_address_or_stack_trace(stack):
    hostname = socket.gethostname()
    answers = [
        requests.post(stack.url, data=b'{"msg": ', timeout=TIMEOUT),
        requests.post(stack.url, json={"msg": "x" * 5000}, timeout=TIMEOUT),
        requests.get(f"{stack.facade.url}/nowhere", timeout=TIMEOUT),
        requests.patch(stack.url, timeout=TIMEOUT),
        requests.post(f"{stack.logging[0].url}/logging", json={"id": "1", "msg": "x"}, timeout=TIMEOUT),
    ]
    for response in answers:
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error"}
        for internal in (hostname, "127.0.0.1", "Traceback", "File \""):
            assert internal not in response.text, response.text
