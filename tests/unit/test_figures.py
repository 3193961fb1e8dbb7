"""The figures in the docs are written by the code that gathered them."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from devstack import ROOT, record, replace_block


def _reliability_figures():
    spec = importlib.util.spec_from_file_location("reliability_figures", ROOT / "scripts" / "reliability_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_replace_block_rewrites_only_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("prose\n<!-- x:begin (written by y) -->\nold\n<!-- x:end -->\nmore prose\n")
    replace_block(doc, "x", "new\n")
    assert doc.read_text() == "prose\n<!-- x:begin (written by y) -->\nnew\n<!-- x:end -->\nmore prose\n"
    with pytest.raises(RuntimeError, match="no block"):
        replace_block(doc, "missing", "anything")


def test_reliability_figures_range_over_every_recorded_run(tmp_path):
    figures = _reliability_figures()
    for run, (lost, slowest, failed) in enumerate([(0, 0.5, []), (0, 3.0, ["503", "503"])]):
        (tmp_path / f"run{run}").mkdir()
        record(
            tmp_path / f"run{run}",
            "member-loss",
            {"acknowledged_lost": lost, "slowest_post_s": slowest, "failed": failed},
        )
    (tmp_path / "soak-1").mkdir()
    (tmp_path / "soak-1" / "soak.json").write_text(json.dumps({"posts_failed": {"refused": 34, "503": 1}}))
    table = figures.markdown(figures.runs(tmp_path))
    assert "| member kill -9: acknowledged lost | 2 | 0 |" in table
    assert "| member kill -9: slowest POST (s) | 2 | 0.5 to 3 |" in table
    assert "| member kill -9: POSTs refused (503, never acknowledged) | 2 | 0 to 2 |" in table
    assert "| soak: POSTs not acknowledged (facade dead, member kill) | 1 | 35 |" in table
    assert "| consumer kill -9: POSTs acknowledged | 0 | not run yet |" in table
