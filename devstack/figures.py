"""Measured figures: kept beside the process logs of a run, and written into the docs between markers."""

from __future__ import annotations

import json
from pathlib import Path


def record(log_dir: Path, name: str, figures: dict) -> None:
    """Keep a test's measured figures beside its process logs, as tests/.logs/<run>/<name>.json."""
    (log_dir / f"{name}.json").write_text(json.dumps(figures, indent=1))


def replace_block(doc: Path, name: str, body: str) -> None:
    """Rewrite the part of `doc` between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`: figures in the
    docs are written by the code that measured them, the prose around them by hand."""
    text = doc.read_text()
    begin, end = f"<!-- {name}:begin", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise RuntimeError(f"{doc} has no block {begin} ... {end}")
    before, rest = text.split(begin, 1)
    marker, rest = rest.split("-->", 1)
    _, after = rest.split(end, 1)
    doc.write_text(f"{before}{begin}{marker}-->\n{body.strip()}\n{end}{after}")
