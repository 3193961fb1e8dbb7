"""./scripts/bench's own logic: the references, the loopback rule, the report."""

import pytest

from bench import report, wrk
from bench.phases import percentile
from bench.reference import create_app


def test_reference_echo_validates_like_the_facade():
    client = create_app().test_client()
    created = client.post("/echo", json={"msg": "hi"})
    assert created.status_code == 201 and created.get_json()["msg"] == "hi"
    assert client.post("/echo", json={"msg": 3}).status_code == 400


def test_load_goes_to_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        wrk.run("http://10.0.0.1:8080/facade", connections=1, seconds=1)


def test_percentile_interpolates_between_the_nearest_ranks():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50.5
    assert percentile(list(reversed(values)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def sample_results() -> dict:
    return {
        "post_rps": 300.0,
        "post_p50_ms": 40.0,
        "post_p99_ms": 90.0,
        "post_vs_ref": 0.4,
        "post_vs_design": 1.05,
        "ref_design_rps": 285.0,
        "ref_chain_rps": 750.0,
        "ref_bare_rps": 3000.0,
        "get_p50_ms_10k": 80.0,
        "get_by_size": {"100": {"p50_ms": 3.0, "p99_ms": 5.0}, "10000": {"p50_ms": 80.0, "p99_ms": 95.0}},
        "meta": {
            "date": "2026-11-28 12:00 UTC",
            "cores": 2,
            "cpu": "x",
            "python": "3.11",
            "seconds": 200,
            "command": "./scripts/bench --quick",
            "plan": {"main_level": 16},
        },
    }


def test_markdown_names_the_machine_the_command_and_the_keys():
    table = report.markdown(sample_results())
    assert "2 cores" in table and "`./scripts/bench --quick`" in table
    assert "| POST /facade / reference chain, same round (`post_vs_ref`) | 0.40 |" in table
    assert "| POST /facade / the naive design, same round (`post_vs_design`) | 1.05 |" in table
    assert "| the naive design (`ref_design_rps`) | 285 |" in table
    assert "| 10,000 | 80.0 ms | 95.0 ms |" in table
    # A figure the run did not measure shows as a dash, not as zero.
    assert "(`drain_msgs_per_s`) | - |" in table


def test_write_docs_replaces_only_the_results_block(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    begin = "<!-- bench:results:begin (written by ./scripts/bench --docs) -->"
    end = "<!-- bench:results:end -->"
    doc.write_text(f"# Benchmarks\nprose before\n{begin}\nold table\n{end}\nprose after\n")
    png = tmp_path / "plot.png"
    report.plot(sample_results(), png)
    report.write_docs("new table", doc, png, tmp_path / "bench.png")
    text = doc.read_text()
    assert "old table" not in text and "new table" in text
    assert begin in text and end in text, "the block can be rewritten again"
    assert text.startswith("# Benchmarks\nprose before\n") and text.endswith("prose after\n")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
