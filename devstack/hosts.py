"""Simulated hosts on one machine: one network namespace per host, each wired by a veth pair into a bridge
that lives in a namespace of its own, with addresses from 127.100.0.0/24.

    hosts = Hosts("hs1a2b")           # every namespace it makes is named hs1a2b-...
    hosts.add("app1")                 # namespace hs1a2b-app1, address 127.100.0.21 (see address())
    hosts.run("app1", ["curl", ...])  # a command inside the host
    hosts.cut("app1"); hosts.heal("app1")
    hosts.kill("app1")                # every process of the host at once, as if it lost power
    hosts.down()                      # everything killed, every namespace of the prefix deleted

Why 127.100.0.0/24: the loopback range is never routed off this machine, so nothing a simulation sends
can leave it; the addresses are reachable only inside the namespaces made here. Two settings make that
work in each namespace: `lo` keeps only 127.0.0.1/32 (by default it holds 127.0.0.0/8 and would answer
for every host's address itself), and `route_localnet` lets the veth carry 127/8 packets.

The bridge namespace has an address too (127.100.0.1, the operator's seat): `entered()` moves the calling
thread into it, so a test's HTTP and Consul calls reach every host as from another machine on the network.
A namespace's name carries the prefix, so `down(prefix)` finds what a crashed run left behind; prefixes and
host names are letters and digits, so one prefix never matches another's namespaces (`hosts` and `hosts2`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

NETWORK = "127.100.0"
BRIDGE_ADDRESS = f"{NETWORK}.1"
# Interface names are at most 15 bytes; the veth ends live only in namespaces of their own, never in the
# machine's, so two simulations can use the same names.
BRIDGE_DEVICE = "br0"
HOST_DEVICE = "eth0"
CLONE_NEWNET = 0x40000000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def namespaces() -> list[str]:
    """Every network namespace of the machine, by name (`ip netns list` prints `name (id: N)`)."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(pid) for pid in done.stdout.split()]


def kill_namespace(namespace: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in a namespace at once (stopped first, so none can react to the others dying),
    until none is left: a process may fork between the listing and the kill."""
    deadline = time.monotonic() + timeout
    while pids := namespace_pids(namespace):
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in namespace {namespace} survived SIGKILL")
        time.sleep(0.05)


def check_name(name: str, what: str = "a namespace prefix") -> str:
    """Prefixes and host names are letters and digits only: a namespace is `<prefix>-<host>`, so with a "-"
    in either, `hosts-b-app1` (prefix hosts-b) would also look like one of prefix `hosts`."""
    if not name or len(name) > 20 or not (name.isascii() and name.isalnum()):
        raise ValueError(f"{what} is a short name of letters and digits only, got {name!r}")
    return name


def owned(prefix: str, names: Sequence[str]) -> list[str]:
    """The namespaces of `names` that belong to `prefix`: exactly `<prefix>-<host>`, a host without "-"."""
    check_name(prefix)
    return [name for name in names if "-" in name and name.rsplit("-", 1)[0] == prefix]


def down(prefix: str) -> list[str]:
    """Kill every process of every namespace named `<prefix>-<host>` and delete them; idempotent. Returns the
    namespaces it deleted."""
    mine = owned(prefix, namespaces())
    for name in mine:
        kill_namespace(name)
    for name in mine:
        _ip("netns", "delete", name, check=False)
    return mine


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered_namespace(namespace: str) -> Iterator[None]:
    """Run the block with the calling thread inside `namespace`; threads started in the block inherit it.
    The thread goes back to its own namespace afterwards (sockets opened inside stay inside)."""
    own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    back = os.open(own, os.O_RDONLY)
    try:
        _setns(f"/run/netns/{namespace}")
        try:
            yield
        finally:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the thread's own network namespace")
    finally:
        os.close(back)


class Hosts:
    """The namespaces of one simulation; names are `<prefix>-<host>`, the bridge's `<prefix>-net`."""

    def __init__(self, prefix: str):
        self.prefix = check_name(prefix)
        self.bridge = f"{prefix}-net"
        self.addresses: dict[str, str] = {}

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{check_name(host, 'a host name')}"

    @staticmethod
    def veth(host: str) -> str:
        """The bridge side of a host's link (v-app1), at most 15 bytes."""
        name = f"v-{host}"
        if len(name) > 15:
            raise ValueError(f"host name {host!r} is too long for an interface name")
        return name

    def exists(self) -> bool:
        return self.bridge in namespaces()

    @staticmethod
    def _built(namespace: str, device: str, address: str) -> bool:
        """The namespace's last step done: its device up with its address (not merely the namespace, which
        a run that failed half-way leaves behind)."""
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, "ip", "-4", "-o", "addr", "show", "dev", device, "up"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.returncode == 0 and f"inet {address}/" in done.stdout

    @contextlib.contextmanager
    def _building(self, namespace: str, device: str, address: str) -> Iterator[bool]:
        """Yields whether to build; a namespace found half-built is deleted first, and one whose build fails
        is deleted, so that the next run builds it whole."""
        if namespace in namespaces():
            if self._built(namespace, device, address):
                yield False
                return
            kill_namespace(namespace)
            _ip("netns", "delete", namespace)
        _ip("netns", "add", namespace)
        try:
            yield True
        except BaseException:
            kill_namespace(namespace)
            _ip("netns", "delete", namespace, check=False)
            raise

    def create(self) -> Hosts:
        """The bridge namespace with its bridge and the operator's address."""
        with self._building(self.bridge, BRIDGE_DEVICE, BRIDGE_ADDRESS) as build:
            if build:
                self._loopback(self.bridge)
                self._in(self.bridge, "ip", "link", "add", BRIDGE_DEVICE, "type", "bridge")
                self._in(self.bridge, "ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE_DEVICE)
                self._route_localnet(self.bridge, BRIDGE_DEVICE)
                self._in(self.bridge, "ip", "link", "set", BRIDGE_DEVICE, "up")
        return self

    def add(self, host: str, address: str) -> str:
        """A host namespace with `address` (in 127.100.0.0/24) on its veth, plugged into the bridge."""
        if not address.startswith(f"{NETWORK}.") or address == BRIDGE_ADDRESS:
            raise ValueError(f"host addresses come from {NETWORK}.0/24 (not {BRIDGE_ADDRESS}), got {address}")
        namespace = self.namespace(host)
        veth = self.veth(host)
        self.addresses[host] = address
        with self._building(namespace, HOST_DEVICE, address) as build:
            if build:
                self._loopback(namespace)
                # The bridge side of a pair whose host end went with a deleted namespace is gone too; one
                # left by anything else would make the add below fail.
                self._in(
                    self.bridge, "ip", "link", "add", veth, "type", "veth", "peer", "name", HOST_DEVICE,
                    "netns", namespace,
                )  # fmt: skip
                self._in(self.bridge, "ip", "link", "set", veth, "master", BRIDGE_DEVICE, "up")
                self._in(namespace, "ip", "addr", "add", f"{address}/24", "dev", HOST_DEVICE)
                self._route_localnet(namespace, HOST_DEVICE)
                self._in(namespace, "ip", "link", "set", HOST_DEVICE, "up")
        return address

    def addr(self, host: str) -> str:
        if host in self.addresses:
            return self.addresses[host]
        done = self._in(self.namespace(host), "ip", "-4", "-o", "addr", "show", "dev", HOST_DEVICE)
        return done.stdout.split("inet ", 1)[1].split("/", 1)[0]

    def hosts(self) -> list[str]:
        """The hosts that exist now, found by their namespaces."""
        start = len(self.prefix) + 1
        return sorted(name[start:] for name in owned(self.prefix, namespaces()) if name != self.bridge)

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the host: its network namespace, and a UTS namespace named after it, so a
        process there sees the host's name as its hostname, as on a machine of its own."""
        return [
            "ip", "netns", "exec", self.namespace(host),
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv,
        ]  # fmt: skip

    def run(self, host: str, argv: Sequence[str], timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(host, argv), timeout=timeout, **kwargs)

    def link(self, host: str) -> str:
        """The host's link state as the bridge sees it: UP or DOWN."""
        done = self._in(self.bridge, "ip", "-o", "link", "show", self.veth(host))
        return "DOWN" if "state DOWN" in done.stdout or ",UP" not in done.stdout else "UP"

    def cut(self, host: str) -> None:
        """The host's cable pulled at the bridge: its processes keep running and see no peer answer."""
        self._in(self.bridge, "ip", "link", "set", self.veth(host), "down")

    def heal(self, host: str) -> None:
        self._in(self.bridge, "ip", "link", "set", self.veth(host), "up")

    def kill(self, host: str) -> None:
        kill_namespace(self.namespace(host))

    def down(self) -> list[str]:
        return down(self.prefix)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread on the bridge namespace's address, reaching every host (see the module)."""
        with entered_namespace(self.bridge):
            yield

    @staticmethod
    def _in(namespace: str, *argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {namespace} failed: {done.stderr.strip()}")
        return done

    def _loopback(self, namespace: str) -> None:
        self._in(namespace, "ip", "link", "set", "lo", "up")
        self._in(namespace, "ip", "addr", "add", "127.0.0.1/32", "dev", "lo")
        self._in(namespace, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")

    def _route_localnet(self, namespace: str, device: str) -> None:
        self._in(namespace, "sysctl", "-qw", f"net.ipv4.conf.{device}.route_localnet=1")
