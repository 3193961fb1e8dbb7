"""Which supervisord is this run directory's: its pid file outlives a supervisord killed with SIGKILL, and on a
busy machine (pid_max 32768 here) the pid names another process minutes later, another stack's supervisord
among them. Taken for this stack's, it would be killed, or its programs taken for this stack's orphans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stackctl.stack_status import live_supervisord

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def supervisord_lookalike(tmp_path):
    """A live process whose command line says supervisord, started for the run directory `other/`."""
    other = tmp_path / "other"
    other.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)", "supervisord", "-c",
         "scripts/supervisord.conf"],
        env={**os.environ, "STACK_RUN_DIR": str(other)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"  # running, with its own command line and environment
    yield proc, other
    proc.kill()
    proc.wait(10)


def test_a_pid_file_naming_another_stacks_supervisord_is_not_this_stacks(supervisord_lookalike, tmp_path):
    proc, other = supervisord_lookalike
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "supervisord.pid").write_text(f"{proc.pid}\n")
    assert live_supervisord(mine) is None


def test_the_supervisord_started_for_the_run_directory_is_its_own(supervisord_lookalike):
    proc, other = supervisord_lookalike
    (other / "supervisord.pid").write_text(f"{proc.pid}\n")
    assert live_supervisord(other) == proc.pid


def test_lib_sh_does_not_take_another_stacks_supervisord_for_its_own(supervisord_lookalike, tmp_path):
    proc, other = supervisord_lookalike
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "supervisord.pid").write_text(f"{proc.pid}\n")
    (other / "supervisord.pid").write_text(f"{proc.pid}\n")

    def supervisord_pid(run_dir: Path) -> str:
        done = subprocess.run(
            ["bash", "-c", 'source scripts/lib.sh && supervisord_pid || echo none'],
            # COLUMNS as a terminal of 40 sets it: ps cuts its lines to it unless told not to.
            cwd=ROOT, env={**os.environ, "STACK_RUN_DIR": str(run_dir), "COLUMNS": "40"}, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        return done.stdout.strip()

    assert supervisord_pid(mine) == "none"
    assert supervisord_pid(other) == str(proc.pid)
