"""What ./scripts/install accepts: hashed Python locks made from pyproject.toml, the project installed editable,
the pinned Hazelcast jar, a consul in a supported version."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import devstack
from devstack import ROOT
from stackctl.hazelcast_member import DEFAULT_JAR

LOCKS = ROOT / "requirements"
# The runtime lock again at the top, where `pip install -r requirements.txt` looks first: ./requirements/lock
# copies requirements/runtime.txt there, and ./scripts/install installs the runtime set from it.
TOP_LOCK = ROOT / "requirements.txt"
GROUPS = ("runtime", "test", "bench", "build")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY = re.compile(r"(?P<name>[a-z0-9][a-z0-9._-]*)==(?P<version>\S+)(?P<hashes>( --hash=sha256:[0-9a-f]{64})+)")


def lock_entries(group: str, path: Path | None = None) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of one lock; fails on any line that is not a hashed pin."""
    text = (path or LOCKS / f"{group}.txt").read_text()
    logical = [
        line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    entries = {}
    for line in logical:
        line = " ".join(line.split())
        match = ENTRY.fullmatch(line)
        assert match, f"requirements/{group}.txt: not a pinned requirement with SHA-256 hashes: {line!r}"
        hashes = frozenset(match["hashes"].split())
        entries[canonicalize_name(match["name"])] = (match["version"], hashes)
    return entries


def asked_for(group: str) -> list[str]:
    """What pyproject.toml asks of a lock: the project's dependencies for runtime, else its group."""
    return PYPROJECT["project"]["dependencies"] if group == "runtime" else PYPROJECT["dependency-groups"][group]


def in_pins(group: str) -> dict[str, str]:
    pins = {}
    for line in asked_for(group):
        req = Requirement(line)
        pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


@pytest.mark.parametrize("group", GROUPS)
def test_every_locked_package_is_pinned_with_sha256_hashes(group):
    entries = lock_entries(group)
    assert entries, f"requirements/{group}.txt pins nothing"
    # The fork, never the abandoned original: both install the same `consul` module.
    assert "python-consul" not in entries


@pytest.mark.parametrize("group", GROUPS)
def test_each_lock_pins_what_its_in_file_asks_for(group):
    entries = lock_entries(group)
    for name, version in in_pins(group).items():
        assert name in entries, f"{name} is in pyproject.toml's {group} but not in its lock"
        locked = entries[name][0]
        assert locked == version, f"{name}: pyproject.toml's {group} asks for {version}, the lock has {locked}"


def test_the_top_level_requirements_txt_is_the_runtime_lock():
    """Every package of the runtime group, at its version and with every one of its hashes, and nothing more:
    `pip install --require-hashes -r requirements.txt` installs what a service needs, on its own."""
    assert TOP_LOCK.is_file(), "no requirements.txt at the top (./requirements/lock writes it)"
    assert lock_entries("runtime", TOP_LOCK) == lock_entries("runtime")


def test_a_service_environment_has_no_test_plot_or_profile_tools():
    runtime = lock_entries("runtime")
    assert not {"matplotlib", "py-spy", "schemathesis", "pytest", "hypothesis"} & set(runtime)
    # ./scripts/up names the holder of a taken port with it (stackctl/stack_status.py).
    assert "psutil" in runtime


def test_the_project_is_installed_and_importable_from_anywhere(tmp_path):
    """No sys.path or PYTHONPATH edits: the packages come from the editable install of this checkout."""
    assert importlib.metadata.distribution(PYPROJECT["project"]["name"]).version == PYPROJECT["project"]["version"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    packages = ", ".join(PYPROJECT["tool"]["setuptools"]["packages"])
    done = subprocess.run(
        [sys.executable, "-c", f"import {packages}; import devstack; print(devstack.ROOT)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT)


def test_a_package_in_several_locks_has_one_version_and_the_same_hashes():
    locks = {group: lock_entries(group) for group in GROUPS}
    for group in ("test", "bench"):
        for name, pinned in locks[group].items():
            for other in GROUPS:
                if other != group and name in locks[other]:
                    assert locks[other][name] == pinned, f"{name} differs between {group}.txt and {other}.txt"


@pytest.mark.parametrize("groups", [("runtime",), ("runtime", "test")])
def test_the_locks_hold_every_dependency_of_their_packages(groups):
    """pip installs the locks with --no-deps: a dependency missing from them would be missing from .venv."""
    locked = {name for group in groups for name in lock_entries(group)}
    for name in sorted(locked):
        for spec in importlib.metadata.distribution(name).requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert canonicalize_name(req.name) in locked, f"{name} needs {req.name}, not in {'+'.join(groups)}"


def install_root(tmp_path: Path, jar: Path | None) -> Path:
    """A copy of the scripts and locks with this checkout's .venv and Consul, and `jar` as the Hazelcast jar:
    ./scripts/install runs there without touching the shared .tools."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", root / "scripts")
    shutil.copytree(ROOT / "conf", root / "conf")  # conf/stack.env: the version and hash lib.sh reads
    shutil.copytree(LOCKS, root / "requirements")
    shutil.copy(TOP_LOCK, root / "requirements.txt")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / ".venv").symlink_to(ROOT / ".venv")
    (root / ".tools").mkdir()
    if (ROOT / ".tools" / "consul").exists():
        (root / ".tools" / "consul").symlink_to(ROOT / ".tools" / "consul")
    # The members' store, built and fetched already: its sources beside it, so install finds it current.
    shutil.copytree(ROOT / "hazelcast-store", root / "hazelcast-store", ignore=shutil.ignore_patterns("target"))
    if (ROOT / ".tools" / "store").exists():
        (root / ".tools" / "store").symlink_to(ROOT / ".tools" / "store")
    if jar is not None:
        (root / ".tools" / "hazelcast").mkdir()
        shutil.copy(jar, root / ".tools" / "hazelcast" / DEFAULT_JAR.name)
    return root


def run_install(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(root / "scripts" / "install")], capture_output=True, text=True, timeout=120)


def test_install_deletes_and_refuses_a_jar_that_is_not_the_pinned_one(tmp_path):
    # A well-formed jar of the right name, so only its hash can give it away.
    forged = tmp_path / "forged.jar"
    with zipfile.ZipFile(forged, "w") as jar:
        jar.writestr(
            "META-INF/MANIFEST.MF",
            "Manifest-Version: 1.0\nMain-Class: com.hazelcast.core.server.HazelcastMemberStarter\n",
        )
    root = install_root(tmp_path, forged)
    fake_venv(root)  # the jar check only: the shared .venv is not this copy's to reinstall

    done = run_install(root)

    assert done.returncode != 0, done.stdout + done.stderr
    assert "SHA-256" in done.stderr and "deleted" in done.stderr, done.stderr
    assert not (root / ".tools" / "hazelcast" / DEFAULT_JAR.name).exists()


def test_install_keeps_the_jar_maven_central_serves(tmp_path):
    root = install_root(tmp_path, DEFAULT_JAR)
    fake_venv(root)

    done = run_install(root)

    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / ".tools" / "hazelcast" / DEFAULT_JAR.name).is_file()


def fake_venv(root: Path) -> Path:
    """A .venv whose pip only writes down how it was called: enough to see what the install asks of it."""
    (root / ".venv").unlink()
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = root / "pip-calls"
    (bin_dir / "python").symlink_to("/bin/true")
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "pip").chmod(0o755)
    return calls


def pip_installs(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line.startswith("install")] if calls.exists() else []


def test_install_checks_every_hash_and_installs_again_only_when_a_lock_changed(tmp_path):
    root = install_root(tmp_path, None)
    (root / ".tools" / "hazelcast").mkdir()
    (root / ".tools" / "hazelcast" / DEFAULT_JAR.name).symlink_to(DEFAULT_JAR)
    calls = fake_venv(root)

    assert run_install(root).returncode == 0
    first, project = pip_installs(calls)
    assert {"--require-hashes", "--no-deps", "--only-binary"} <= set(first.split())
    assert f"-r {root}/requirements.txt -r {root}/requirements/test.txt" in first
    assert "bench.txt" not in first
    # The project itself, after the locks: editable, resolving nothing, built by the locked setuptools.
    assert f"-r {root}/requirements/build.txt" in first
    assert {"--no-deps", "--no-build-isolation"} <= set(project.split()) and project.endswith(f"--editable {root}")

    assert run_install(root).returncode == 0
    assert len(pip_installs(calls)) == 2, "nothing changed, nothing to install"

    with open(root / "requirements" / "test.txt", "a") as lock:
        lock.write("# a changed lock\n")
    assert run_install(root).returncode == 0
    assert len(pip_installs(calls)) == 4

    done = subprocess.run([str(root / "scripts" / "install"), "--bench"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pip_installs(calls)[-2].endswith(f"-r {root}/requirements/bench.txt")


def fake_consul(tmp_path: Path, first_line: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "consul"
    script.write_text(f'#!/bin/sh\necho "{first_line}"\necho "Protocol 2 spoken by default"\n')
    script.chmod(0o755)
    return script


def lib_consul_bin() -> str:
    done = subprocess.run(
        ["bash", "-c", 'source "$0" && consul_bin', str(ROOT / "scripts" / "lib.sh")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    "first_line", ["Consul v0.9.0", "Consul v99.0.0", "Consul v1.7.14", "Consul v1.15.0", "not a consul"]
)
def test_a_consul_on_path_in_an_unsupported_version_is_ignored(tmp_path, monkeypatch, caplog, first_line):
    fake = fake_consul(tmp_path, first_line)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")

    assert lib_consul_bin() != str(fake)
    assert devstack.consul_binary() != str(fake)
    assert f"ignoring {fake}" in caplog.text


@pytest.mark.parametrize("first_line", ["Consul v1.8.7", "Consul v1.14.8", "Consul v1.14.8-dev"])
def test_a_consul_on_path_in_a_supported_version_is_used(tmp_path, monkeypatch, first_line):
    fake = fake_consul(tmp_path, first_line)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")

    assert lib_consul_bin() == str(fake)
    assert devstack.consul_binary() == str(fake)


def test_the_real_consul_first_on_path_is_used(tmp_path, monkeypatch):
    real = devstack.consul_binary()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "consul").symlink_to(real)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    assert devstack.consul_binary() == str(bin_dir / "consul")


def test_agents_from_consul_1_14_switch_off_the_grpc_tls_port_older_ones_do_not_know():
    ports = {"http": 1, "dns": 2, "serf-lan": 3, "serf-wan": 4, "server": 5, "grpc": 6}
    old = devstack.agent_port_flags((1, 8, 7), ports)
    new = devstack.agent_port_flags((1, 14, 8), ports)

    assert not any(flag.startswith("-grpc-tls-port") for flag in old)
    assert "-grpc-tls-port=-1" in new
    assert "-https-port=-1" in old and "-https-port=-1" in new
    assert {f"-{name}-port={port}" for name, port in ports.items()} <= set(old) & set(new)
