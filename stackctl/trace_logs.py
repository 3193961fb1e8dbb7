"""`./scripts/trace ID`: one request's path through the stack, from the log files, in time order.

Reads every log file under a directory (./scripts/up's STACK_LOG_DIR by default, or --logs DIR: a test's
or a simulated host's), in both LOG_FORMATs (servicekit/logs.py), rotated files (`x.log.1`) included, and
prints the records that carry the request id, oldest first (the text format's stamps are UTC to the
microsecond), each with its service and instance: the facade ("logged by ...; queueing it"), every logging
instance the request reached (each attempt, retries included), and the consumer that took the item off the
queue.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# The text format of servicekit/logs.py: the time (UTC to the microsecond, `...:00.123456Z`; files written
# before that have local time to the millisecond, `...:00,123`), level, [instance pid=N rid=ID], logger.
_TEXT = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d) (?P<clock>\d\d:\d\d:\d\d)(?:\.(?P<us>\d{6})Z|,(?P<ms>\d{3})) (?P<level>[A-Z]+) "
    r"\[(?P<instance>\S+) pid=\d+(?: rid=(?P<rid>\S+))?\] (?P<logger>[^:\s]+): (?P<message>.*)",
    re.DOTALL,
)
_LOG_FILE = re.compile(r".*\.log(\.\d+)?")
_SERVICE_OF_INSTANCE = re.compile(r"(.+?-service)-")


@dataclass(order=True)
class Record:
    at: float
    source: str = field(compare=False)
    number: int
    level: str = field(compare=False)
    service: str = field(compare=False)
    instance: str = field(compare=False)
    logger: str = field(compare=False)
    message: str = field(compare=False)
    request_id: str | None = field(compare=False)

    def line(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.at, datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp}  {self.service:<16} {self.instance:<40} {self.level:<7} {self.logger}: {self.message}"


def _service_of(instance: str) -> str:
    match = _SERVICE_OF_INSTANCE.match(instance)
    return match[1] if match else "-"


def parse_line(text: str, source: str = "", number: int = 0) -> Record | None:
    """One log line of either format as a Record; None for a line of neither (Consul's, Hazelcast's)."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
            at = datetime.datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
            return Record(
                at,
                source,
                number,
                str(data.get("level", "")),
                str(data.get("service") or "-"),
                str(data.get("instance", "")),
                str(data.get("logger", "")),
                str(data.get("message", "")),
                data.get("request_id"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
    match = _TEXT.match(text)
    if match is None:
        return None
    clock = datetime.datetime.strptime(f"{match['date']} {match['clock']}", "%Y-%m-%d %H:%M:%S")
    if match["us"] is not None:
        at = clock.replace(tzinfo=datetime.UTC).timestamp() + int(match["us"]) / 1_000_000
    else:
        # An older line: the local time of the machine that wrote it, to the millisecond.
        at = clock.timestamp() + int(match["ms"]) / 1000
    instance = match["instance"]
    return Record(
        at,
        source,
        number,
        match["level"],
        _service_of(instance),
        instance,
        match["logger"],
        match["message"],
        match["rid"],
    )


def records_of(lines: Iterable[str], request_id: str, source: str = "") -> Iterator[Record]:
    """The records of one file that carry `request_id`; a traceback's lines stay with their record."""
    current: Record | None = None
    for number, raw in enumerate(lines):
        text = raw.rstrip("\n")
        # Most lines are someone else's: the substring test spares them the parsing.
        record = parse_line(text, source, number) if request_id in text or text[:1] in "{0123456789" else None
        if record is None and current is not None and text and not _TEXT.match(text):
            current.message += "\n" + text
            continue
        if current is not None:
            yield current
        current = record if record is not None and record.request_id == request_id else None
    if current is not None:
        yield current


def log_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and _LOG_FILE.fullmatch(p.name))


def trace(request_id: str, directory: Path) -> list[Record]:
    found: list[Record] = []
    for path in log_files(directory):
        with open(path, encoding="utf-8", errors="replace") as lines:
            found.extend(records_of(lines, request_id, str(path)))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/trace", description=__doc__.splitlines()[0])
    parser.add_argument("request_id", help="the X-Request-ID the answer echoed")
    parser.add_argument(
        "--logs",
        type=Path,
        default=Path(os.environ.get("STACK_LOG_DIR", "logs")),
        help="the log directory (default: STACK_LOG_DIR, ./scripts/up's)",
    )
    args = parser.parse_args(argv)
    if not args.logs.is_dir():
        print(f"error: no log directory {args.logs}", file=sys.stderr)
        return 2
    records = trace(args.request_id, args.logs)
    if not records:
        print(f"no log line carries request id {args.request_id} under {args.logs}", file=sys.stderr)
        return 1
    for record in records:
        print(record.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
