"""Free ports for the dev stack's processes: outside the kernel's ephemeral range, off the default stack's
ports, and reserved, so that two processes picking at once (two pytest-xdist workers, two runs of
./scripts/test, a test beside ./scripts/bench) never pick the same one.

Why not bind port 0: the kernel answers with a port of ip_local_port_range, the range it also takes the
local port of every outgoing connection from. Between free_port() returning and the child binding the port,
any connect() on the machine may take it: on a fresh clone messages_svc could not bind 57855 (issue 18).
A port outside that range is taken only by a program that asks for it by number.

Why a lock: a probe bind says that nobody holds the port now, not that another process has not just picked
it for a child that has not bound it yet. A port is handed out only while this process holds an exclusive
flock on the file named after it in LOCK_DIR, and it holds it until it releases the port or exits: the
kernel drops the lock with the process however it ends, so a crashed run leaves nothing to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import random
import socket
import stat
import threading
from collections.abc import Iterable
from pathlib import Path

from servicekit import stack

# Ports below this are the usual homes of a developer's own servers (PostgreSQL's 5432, a dev server's
# 8000), the default stack's (conf/stack.env) and Consul's (8300-8302, 8500, 8502, 8503, 8600).
LOWEST = 10000
# Shared by every process of this user: a fixed path, not TMPDIR, which each process may set to its own.
LOCK_DIR = Path("/tmp") / f"devstack-ports-{os.getuid()}"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Consul's own defaults, whether or not conf/stack.env names them (8503: gRPC TLS from Consul 1.14).
CONSUL_DEFAULTS = {8300, 8301, 8302, 8500, 8502, 8503, 8600}

_held: dict[int, int] = {}  # port -> the fd of its lock file
_lock = threading.Lock()


@functools.cache
def ephemeral_range() -> range:
    """The ports the kernel gives to bind(0) and to outgoing connections (ip_local_port_range), read once."""
    low, high = EPHEMERAL_RANGE.read_text().split()
    return range(int(low), int(high) + 1)


def default_stack_ports() -> set[int]:
    """Every port of ./scripts/up's stack at its defaults (conf/stack.env), Consul's defaults included."""
    ports = {stack.port(name) for name in stack.values() if name.endswith("_PORT")}
    for program in ("HAZELCAST", "LOGGING", "MESSAGES", "FACADE"):
        ports.update(stack.ports(program, env={}))
    return ports | CONSUL_DEFAULTS


@functools.cache
def _lock_dir() -> Path:
    """LOCK_DIR, made 0700 by this user; one someone else made, or opened up, is refused (it would let them
    hold or free our ports, and a root run would create files wherever their symlinks point)."""
    with contextlib.suppress(FileExistsError):
        LOCK_DIR.mkdir(mode=0o700)
    info = LOCK_DIR.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{LOCK_DIR} is not a directory of uid {os.getuid()} with mode 0700: remove it")
    return LOCK_DIR


def _bindable(port: int) -> bool:
    """Nothing on the machine holds `port`, for TCP or UDP, on any address (Consul needs both; no
    SO_REUSEADDR, so a port a connection still keeps in TIME_WAIT counts as taken, as Hazelcast sees it)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise
    return True


def reserve(port: int) -> bool:
    """Make `port` this process's until release() or exit: False when it is in the ephemeral range, held by
    another process that reserves ports this way, or bound by anything on the machine."""
    if port in ephemeral_range() or not 0 < port < 65536:
        return False
    with _lock:
        if port in _held:
            return False
        fd = os.open(_lock_dir() / str(port), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not _bindable(port):
            os.close(fd)
            return False
        _held[port] = fd
        return True


def reserve_all(ports: Iterable[int]) -> bool:
    """Reserve every one of `ports`, or none of them."""
    taken: list[int] = []
    for port in ports:
        if not reserve(port):
            release(*taken)
            return False
        taken.append(port)
    return True


def release(*ports: int) -> None:
    """Give ports back: another process may pick them from now on."""
    with _lock:
        for port in ports:
            fd = _held.pop(port, None)
            if fd is not None:
                os.close(fd)


@functools.cache
def candidates() -> tuple[int, ...]:
    """The ports free_port() may hand out."""
    ephemeral = ephemeral_range()
    avoid = default_stack_ports()
    return tuple(p for p in range(LOWEST, 65536) if p not in ephemeral and p not in avoid)


def free_port() -> int:
    """A free loopback port, reserved for this process (see the module). From a random place in the pool, so
    that runs side by side seldom try the same ports first."""
    pool = candidates()
    if not pool:
        raise RuntimeError(f"no port from {LOWEST} to 65535 outside the ephemeral range {ephemeral_range()}")
    start = random.randrange(len(pool))
    for i in range(len(pool)):
        if reserve(port := pool[(start + i) % len(pool)]):
            return port
    raise RuntimeError(f"every one of the {len(pool)} ports outside the ephemeral range is taken or reserved")
