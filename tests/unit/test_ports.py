"""devstack's free ports (devstack/ports.py): outside the kernel's ephemeral range, where any outgoing
connection could take one before its child binds it, off the default stack's ports, and never the same for
two processes that pick at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devstack import free_port, ports
from servicekit import stack

PICKS = 300


def kernel_ephemeral_range() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_free_ports_are_outside_the_ephemeral_range_and_off_the_default_stacks_ports():
    picked = [free_port() for _ in range(PICKS)]
    try:
        ephemeral = kernel_ephemeral_range()
        assert [p for p in picked if p in ephemeral] == []
        default = {*stack.ports("HAZELCAST", {}), *stack.ports("LOGGING", {}), *stack.ports("MESSAGES", {})}
        default |= {*stack.ports("FACADE", {}), 8300, 8301, 8302, 8500, 8502, 8503, 8600}
        assert not set(picked) & default
        assert len(set(picked)) == PICKS, "one process got the same port twice"
    finally:
        ports.release(*picked)


# Picks PICKS ports, prints them, and holds them until its stdin closes: as a pytest-xdist worker or another
# run of ./scripts/test holds the ports of the processes it started.
PICKER = textwrap.dedent(
    f"""
    import sys
    from devstack import free_port
    print(" ".join(str(free_port()) for _ in range({PICKS})), flush=True)
    sys.stdin.read()
    """
)


def test_processes_that_pick_at_the_same_time_never_get_the_same_port():
    pickers = [
        subprocess.Popen([sys.executable, "-c", PICKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        picked = [[int(port) for port in picker.stdout.readline().split()] for picker in pickers]
        mine = [free_port() for _ in range(PICKS)]
    finally:
        for picker in pickers:
            picker.stdin.close()
            picker.wait(30)
    ports.release(*mine)
    every = [port for picks in picked for port in picks] + mine
    assert [len(picks) for picks in picked] == [PICKS] * 4
    assert len(set(every)) == len(every), f"{len(every) - len(set(every))} ports handed out twice"


def test_a_port_is_not_reserved_twice_and_is_free_again_once_released():
    port = free_port()
    assert not ports.reserve(port)
    other = subprocess.run(
        [sys.executable, "-c", f"from devstack import ports; print(ports.reserve({port}))"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert other.stdout.strip() == "False", other.stderr
    ports.release(port)
    assert ports.reserve(port)
    ports.release(port)


def test_a_port_bound_by_anyone_or_in_the_ephemeral_range_is_not_reserved():
    with socket.socket() as holder:
        holder.bind(("127.0.0.2", 0))
        assert not ports.reserve(holder.getsockname()[1])  # in the ephemeral range, and bound
    port = free_port()
    ports.release(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))  # UDP only, on one address: a Consul agent could not bind it
        assert not ports.reserve(port)


def test_several_ports_are_reserved_all_or_none():
    with socket.socket() as holder:
        # The port after a free one may be anyone's (another worker's stack): take a pair where it is not.
        for _ in range(50):
            first = free_port()
            try:
                holder.bind(("127.0.0.1", first + 1))
                break
            except OSError:
                continue
            finally:
                ports.release(first)
        else:
            pytest.fail("no free port followed by a free port in 50 picks")
        assert not ports.reserve_all([first, first + 1])
    assert ports.reserve(first), "a port of a failed reserve_all stayed reserved"
    ports.release(first)


def test_a_lock_directory_that_others_may_write_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "ports"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(ports, "LOCK_DIR", shared)
    ports._lock_dir.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=str(shared)):
            free_port()
    finally:
        ports._lock_dir.cache_clear()
