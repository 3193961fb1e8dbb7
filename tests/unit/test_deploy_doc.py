"""docs/DEPLOY.md is generated from conf/hosts/, the templates the simulated hosts run."""

from __future__ import annotations

import configparser
import dataclasses
import re
import subprocess

from devstack import deploy_doc, host_config
from devstack.consul_agent import consul_binary
from devstack.processes import ROOT, VENV_BIN


def test_deploy_doc_is_up_to_date_with_the_templates():
    assert deploy_doc.DOC.exists(), "no docs/DEPLOY.md: run ./scripts/hosts deploy-docs"
    assert deploy_doc.DOC.read_text() == deploy_doc.markdown(), "run ./scripts/hosts deploy-docs"


def test_deploy_doc_shows_every_agent_configuration_it_validates():
    text = deploy_doc.markdown()
    for config in deploy_doc.agent_configs().values():
        assert config.strip() in text
    for needed in ("bootstrap_expect = 3", "encrypt", "auto_encrypt", "consul acl bootstrap", "8301/tcp+udp",
                   "ALLOWED_HOSTS", "421", "agent_prefix"):  # fmt: skip
        assert needed in text


def test_every_program_runs_as_an_unprivileged_user_and_no_secret_is_in_its_configuration():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(host_config.supervisor_config("app1", "192.0.2.21", deploy_doc.LAYOUT, app=True))
    users = {section.removeprefix("program:"): parser[section]["user"] for section in parser.sections()
             if section.startswith("program:")}  # fmt: skip
    assert users == {"consul": "consul", "hazelcast": "messages", "nginx": "messages", "logging": "messages",
                     "messages": "messages", "facade": "messages"}  # fmt: skip
    for program in host_config.TOKEN_PROGRAMS:
        env = parser[f"program:{program}"]["environment"]
        assert f'CONSUL_HTTP_TOKEN_FILE="/etc/messages/tokens/{program}.token"' in env, env
        assert "CONSUL_HTTP_TOKEN=" not in env
    assert "token of" not in host_config.supervisor_config("app1", "192.0.2.21", deploy_doc.LAYOUT, app=True)


def test_every_file_the_doc_shows_with_a_secret_is_listed_0600_and_owned_by_the_user_that_reads_it():
    text = deploy_doc.markdown()
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| `([^`]+)` \| `([0-7]+)` \|$", text, re.MULTILINE)
    listed = {path: (owner, mode) for path, owner, mode in rows}
    config_dir = deploy_doc.CONFIG_DIR
    # The agent reads its configuration directory: the gossip key, its token, a server's TLS key, the
    # member's definition with the hazelcast token. Each program reads its own token file.
    expected = {f"{config_dir}/{name}": "consul" for name in ("agent.hcl", "acl.hcl", host_config.SERVER_KEY,
                                                                "hazelcast.json")}  # fmt: skip
    expected.update({f"/etc/messages/tokens/{p}.token": "messages" for p in host_config.TOKEN_PROGRAMS})
    assert listed == {path: (owner, "0600") for path, owner in expected.items()}
    # The files shown with a secret in them are shown under those names.
    for shown in re.findall(r"`(/etc/consul\.d/[^`]+)` on (?:consul1|app1)", text):
        assert shown in listed, shown
    assert "umask 077" in text and "install -m 0600 -o consul" in text


def test_systemd_accepts_every_unit_and_each_restarts_on_failure_after_its_agent(tmp_path):
    """The units DEPLOY.md shows, rendered with this checkout's paths (systemd-analyze checks that each command
    is there to run), pass `systemd-analyze verify` without a warning."""
    layout = dataclasses.replace(deploy_doc.LAYOUT, root=str(ROOT), venv_bin=str(VENV_BIN), consul_bin=consul_binary(),
                                 log_dir=str(tmp_path / "logs"))  # fmt: skip
    units = deploy_doc.systemd_units(layout)
    for name, unit in units.items():
        (tmp_path / name).write_text(unit)
    verified = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / name) for name in units)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verified.returncode == 0 and not verified.stderr.strip() and not verified.stdout.strip(), (
        verified.stdout + verified.stderr
    )
    for name, unit in deploy_doc.systemd_units().items():
        parsed = configparser.ConfigParser(interpolation=None, strict=False)
        parsed.read_string(unit)
        assert parsed["Service"]["Restart"] == "on-failure" and parsed["Unit"]["StartLimitBurst"], name
        if name in {host_config.unit_name(p) for p in host_config.TOKEN_PROGRAMS}:  # what talks to the agent
            assert host_config.unit_name("consul") in parsed["Unit"]["After"].split(), name
            assert host_config.unit_name("consul") in parsed["Unit"]["Wants"].split(), name
    # Tokens are credentials, never an environment value or a path the program opens itself.
    logging_unit = deploy_doc.systemd_units()[host_config.unit_name("logging")]
    assert "LoadCredential=consul-token:/etc/messages/tokens/logging.token" in logging_unit
    assert 'Environment="CONSUL_HTTP_TOKEN_FILE=%d/consul-token"' in logging_unit
