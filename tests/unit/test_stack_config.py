"""conf/stack.env is read the same by the shell scripts (which source it) and by Python."""

from __future__ import annotations

import subprocess

import pytest

from servicekit import stack
from servicekit.settings import SettingsError, instance_id
from stackctl import hazelcast_member


def test_python_reads_stack_env_as_the_shell_sources_it():
    names = list(stack.values())
    shell = subprocess.run(
        [
            "bash",
            "-c",
            'source "$0" && for n in "$@"; do printf "%s=%s\\n" "$n" "${!n}"; done',
            str(stack.STACK_ENV),
            *names,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert dict(line.split("=", 1) for line in shell.stdout.splitlines()) == stack.values()
    assert stack.values()["HAZELCAST_JAR_IN_TOOLS"] == f"hazelcast/hazelcast-{stack.hazelcast_version()}.jar"


def test_an_instance_count_from_the_environment_is_read_by_lib_sh_and_python_alike():
    """scripts/lib.sh and servicekit.stack agree: a count set in the environment wins, the others are the file's."""
    env = {"PATH": "/usr/bin:/bin", "LOGGING_INSTANCES": "1", "HAZELCAST_INSTANCES": "2"}
    shell = subprocess.run(
        ["bash", "-c", 'source "$0" && for p in logging hazelcast messages; do echo $(instance_ports $p); done '
         '&& echo "$STACK_DEFAULT_LOGGING_INSTANCES"', str(stack.ROOT / "scripts" / "lib.sh")],
        capture_output=True, text=True, timeout=30, check=True, env=env,
    )  # fmt: skip
    *lines, default = shell.stdout.splitlines()
    python = [stack.ports(program, env) for program in ("LOGGING", "HAZELCAST", "MESSAGES")]
    assert [[int(p) for p in line.split()] for line in lines] == python
    assert python == [[8081], [5701, 5702], [8084, 8085]]
    assert int(default) == stack.count("LOGGING", env={}) == 3


def test_the_default_stack_binds_each_port_once_with_every_instance_python_counts():
    """The layout of a default ./scripts/up (the tests of the scripts run a smaller stack): no two programs
    share a port, and supervisord's programs are the instances servicekit.stack counts."""
    shell = subprocess.run(
        ["bash", "-c", 'source "$0" && program_ports', str(stack.ROOT / "scripts" / "lib.sh")],
        capture_output=True, text=True, timeout=30, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    lines = [line.split() for line in shell.stdout.splitlines()]
    ports = [port for _, *bound in lines for port in bound]
    assert len(ports) == len(set(ports)), sorted(ports)
    expected = {"consul", "postgres"} | {
        f"{'hazelcast' if program == 'HAZELCAST' else 'services'}:{program.lower()}-{port}"
        for program in ("HAZELCAST", "LOGGING", "MESSAGES", "FACADE")
        for port in stack.ports(program, env={})
    }
    assert {name for name, *_ in lines} == expected | {f"nginx:nginx-{port}" for port in stack.ports("FACADE", env={})}
    assert [len(stack.ports(p, env={})) for p in ("HAZELCAST", "LOGGING", "MESSAGES", "FACADE")] == [3, 3, 2, 1]


@pytest.mark.parametrize("line", ['A="quoted"', "A=two words", "lower=1", "A=$(date)", "A=${UNSET}"])
def test_a_line_the_shell_would_read_otherwise_is_refused(line):
    with pytest.raises((ValueError, KeyError)):
        stack.parse(line)


def test_each_member_is_a_consul_service_definition_with_its_instance_id_and_a_tcp_check():
    definitions = hazelcast_member.service_definitions([15701, 15702])
    assert [d["id"] for d in definitions] == [instance_id("hazelcast", 15701), instance_id("hazelcast", 15702)]
    assert [d["port"] for d in definitions] == [15701, 15702]
    assert definitions[0]["meta"] == {"version": stack.hazelcast_version()}
    assert definitions[0]["check"]["tcp"] == "127.0.0.1:15701"


def test_a_member_on_a_simulated_host_is_named_after_that_host(monkeypatch):
    monkeypatch.setenv("INSTANCE_HOST", "app2")
    assert [d["id"] for d in hazelcast_member.service_definitions([15701])] == ["hazelcast-app2-15701"]


def test_the_merge_delay_is_a_setting_passed_to_the_member_as_both_hazelcast_properties():
    assert hazelcast_member.member_properties({})[1:] == []  # Hazelcast's own defaults: 300 s, then 120 s
    assert hazelcast_member.member_properties({"HAZELCAST_MERGE_DELAY_SECONDS": "5"})[1:] == [
        "-Dhazelcast.merge.first.run.delay.seconds=5",
        "-Dhazelcast.merge.next.run.delay.seconds=5",
    ]
    for bad in ("0", "soon", "-1", "1.5"):
        with pytest.raises(SettingsError, match="HAZELCAST_MERGE_DELAY_SECONDS"):
            hazelcast_member.member_properties({"HAZELCAST_MERGE_DELAY_SECONDS": bad})


def test_partition_groups_by_host_are_off_unless_asked_for():
    assert hazelcast_member.member_properties({})[0] == "-Dhz.partition.group.enabled=false"
    assert hazelcast_member.member_properties({"HAZELCAST_PARTITION_GROUPS": "host"})[0] == (
        "-Dhz.partition.group.enabled=true"
    )
    with pytest.raises(SettingsError, match="HAZELCAST_PARTITION_GROUPS"):
        hazelcast_member.member_properties({"HAZELCAST_PARTITION_GROUPS": "zone"})
