"""gunicorn's own log lines (master and workers) carry the instance id, like every line the services write."""

from __future__ import annotations

import re

from devstack import eventually, wait_passing
from servicekit.gunicorn_hooks import WORKER_READY


def test_gunicorn_own_lines_carry_the_instance_id(consul_agent, start_instance):
    service = wait_passing(consul_agent, start_instance("logging-service"))
    tagged = re.compile(rf"^\S+ \S+ [A-Z]+ \[{re.escape(service.instance_id)} pid=\d+\] gunicorn\.error: ")

    def booted() -> list[str]:
        lines = service.proc.log_path.read_text(errors="replace").splitlines()
        assert sum(WORKER_READY in line for line in lines) == 2, "both workers ready"
        return lines

    lines = eventually(booted, 30, what="both workers logged that they are ready")
    for text in ("Starting gunicorn", "Listening at: http://127.0.0.1:", "Booting worker with pid"):
        found = [line for line in lines if text in line]
        assert found, f"no line with {text!r}:\n" + "\n".join(lines)
        assert all(tagged.match(line) for line in found), "\n".join(found)
