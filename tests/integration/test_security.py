"""What the running stack exposes: loopback listeners only, errors that name no internals, and nothing a
web page in the user's browser can write (no JSON Content-Type) or read (a rebinding host name)."""

from __future__ import annotations

import ipaddress
import socket
import uuid

import psutil
import requests

from devstack import check_status, read_all

TIMEOUT = 10
JSON = {"Content-Type": "application/json"}


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
    pids.update({f"nginx of {s.instance_id}": s.front.pid for s in stack.instances if s.front is not None})
    assert len(pids) > len(stack.instances), "the facade has its nginx in front"
    pids.update({proc.name: proc.pid for proc in stack.cluster.members.values()})
    pids["consul"] = stack.agent.proc.pid
    for name, pid in pids.items():
        addresses = listening_addresses(pid)
        assert addresses, f"{name} listens nowhere"
        assert all(is_loopback(a) for a in addresses), (name, addresses)


def test_error_responses_name_no_host_address_or_stack_trace(stack):
    hostname = socket.gethostname()
    answers = [
        requests.post(stack.url, data=b'{"msg": ', headers=JSON, timeout=TIMEOUT),
        requests.post(stack.url, data=b'{"msg": "x"}', headers={"Content-Type": "text/plain"}, timeout=TIMEOUT),
        requests.get(stack.url, headers={"Host": f"attacker.example:{stack.facade.port}"}, timeout=TIMEOUT),
        requests.post(stack.url, json={"msg": "x" * 5000}, timeout=TIMEOUT),
        requests.get(f"{stack.facade.url}/nowhere", timeout=TIMEOUT),
        requests.patch(stack.url, timeout=TIMEOUT),
        requests.post(f"{stack.logging[0].url}/logging", json={"id": "1", "msg": "x"}, timeout=TIMEOUT),
    ]
    for response in answers:
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error"}
        for internal in (hostname, "127.0.0.1", "Traceback", 'File "'):
            assert internal not in response.text, response.text


def logged(stack) -> list[str]:
    return read_all(stack.url, "logging")


def test_a_post_a_web_page_can_send_without_asking_is_415_and_stores_nothing(stack):
    # text/plain, form types and no type at all: what a page may POST cross-origin without a CORS preflight.
    sent = []
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        msg = f"from a web page {uuid.uuid4()}"
        sent.append(msg)
        facade = requests.post(stack.url, data=f'{{"msg": "{msg}"}}', headers=headers, timeout=TIMEOUT)
        body = f'{{"id": "{uuid.uuid4()}", "msg": "{msg}"}}'
        logging = requests.post(f"{stack.logging[0].url}/logging", data=body, headers=headers, timeout=TIMEOUT)
        for response in (facade, logging):
            assert response.status_code == 415, (content_type, response.text)
            assert set(response.json()) == {"error"}
    assert not set(sent) & set(logged(stack))


def test_a_request_under_a_foreign_host_name_gets_nothing_from_any_instance(stack):
    msg = f"private {uuid.uuid4()}"
    assert requests.post(stack.url, json={"msg": msg}, timeout=TIMEOUT).status_code == 201
    reads = {"facade-service": "/facade", "logging-service": "/logging", "messages-service": "/messages"}
    for service in stack.instances:
        # DNS rebinding: the page's own name, now resolving to 127.0.0.1, is what the browser sends as Host.
        rebound = {"Host": f"attacker.example:{service.port}"}
        for path in (reads[service.name], "/health", "/metrics"):
            response = requests.get(f"{service.url}{path}", headers=rebound, timeout=TIMEOUT)
            assert response.status_code == 421, (service.instance_id, path, response.text)
            assert set(response.json()) == {"error"}
            assert msg not in response.text
        # The names a local client uses still work, on the instance's port.
        for host in ("localhost", "127.0.0.1", "[::1]"):
            local = {"Host": f"{host}:{service.port}"}
            response = requests.get(f"{service.url}/health", headers=local, timeout=TIMEOUT)
            assert response.status_code == 200, (service.instance_id, host, response.text)
    rebound = {"Host": "attacker.example", **JSON}
    written = f"rebound {uuid.uuid4()}"
    assert requests.post(stack.url, json={"msg": written}, headers=rebound, timeout=TIMEOUT).status_code == 421
    assert written not in logged(stack) and msg in logged(stack)


def test_consuls_checks_and_the_facades_calls_use_an_accepted_host(stack):
    # Consul's HTTP check and the facade's calls address each instance by its registered address
    # (SERVICE_HOST), which every instance accepts: all pass, and a POST goes through the facade.
    client = stack.agent.client()
    for service in stack.instances:
        assert check_status(client, service.instance_id) == "passing", service.instance_id
    assert requests.post(stack.url, json={"msg": f"through {uuid.uuid4()}"}, timeout=TIMEOUT).status_code == 201
