"""The suite's parallel run keeps its promise: the tests of one xdist_group run in one worker, one after the
other (pyproject.toml runs the suite with `--dist loadgroup`). pytest-xdist 3.8 with pytest 9.2 spreads them
over the workers without a word (pytest-dev/pytest-xdist#1386): a module fixture would then be built once
per worker, and tests that must not overlap would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

GROUPED = 6

SUITE = textwrap.dedent(
    f"""
    import os
    import time

    import pytest


    @pytest.mark.xdist_group("together")
    @pytest.mark.parametrize("n", range({GROUPED}))
    def test_grouped(n):
        with open(os.path.join(os.environ["GROUPED_OUT"], f"grouped-{{n}}"), "w") as out:
            out.write(os.environ["PYTEST_XDIST_WORKER"])
        time.sleep(0.1)


    @pytest.mark.parametrize("n", range({GROUPED}))
    def test_alone(n):
        time.sleep(0.1)
    """
)


def test_the_tests_of_one_xdist_group_run_in_one_worker(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", f"--rootdir={tmp_path}",
         "-n", "3", "--dist", "loadgroup", str(tmp_path)],
        env={**os.environ, "GROUPED_OUT": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = {(tmp_path / f"grouped-{n}").read_text() for n in range(GROUPED)}
    assert len(workers) == 1, f"the group ran in workers {sorted(workers)}"
