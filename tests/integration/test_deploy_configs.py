"""The agent configurations docs/DEPLOY.md shows, ACL and TLS blocks included, are ones the consul binary we
ship accepts (`consul validate`), with certificates made by that same binary."""

from __future__ import annotations

import subprocess

import pytest

from devstack import consul_binary
from devstack.deploy_doc import agent_configs


@pytest.mark.parametrize("role", ["server", "client"])
def test_the_documented_agent_configuration_passes_consul_validate(role, tmp_path):
    binary = consul_binary()
    for argv in (["tls", "ca", "create"], ["tls", "cert", "create", "-server", "-dc", "dc1"]):
        subprocess.run([binary, *argv], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    key = subprocess.run([binary, "keygen"], check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    config_dir = tmp_path / "consul.d"
    config_dir.mkdir()
    for name, text in agent_configs(config_dir=str(tmp_path)).items():
        if name.startswith(f"{role}"):
            text = text.replace("<output of: consul keygen>", key).replace("/var/lib/consul", str(tmp_path / "data"))
            (config_dir / name).write_text(text)
    assert len(list(config_dir.iterdir())) == 3
    done = subprocess.run([binary, "validate", str(config_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
