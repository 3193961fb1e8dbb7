"""A reader of `.http` files (requests.http at the top of the repository), in the part of the format that the
REST Client of VS Code and the HTTP client of JetBrains IDEs share, and a runner that sends each request.

The format, as both clients read it:
- `###` starts a request (the rest of that line is its title);
- `@name = value` defines a file variable, `{{name}}` uses one (in the URL, the headers and the body);
- `#` and `//` lines before the request line are comments;
- then `METHOD URL [HTTP/1.1]`, headers `Name: value` up to a blank line, and the body up to the next `###`.

Two comment lines mean something to the runner, and to a reader, while both clients ignore them:
- `# expect: 201`: the status the request documents;
- `# keep "next" as @next`: the answer's JSON field `next` becomes the variable `next` for the requests after
  it (a client user copies it into `@next` by hand; the file's own value is one that works as it is).
JetBrains' response-handler scripts (`> {% ... %}`) would do the same in one client, but VS Code sends them as
the request's body, and VS Code's `{{name.response.body.$.next}}` is unknown to JetBrains: a comment is
what both tolerate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

_VARIABLE = re.compile(r"^@([A-Za-z_][\w-]*)\s*=\s*(.*?)\s*$")
_USE = re.compile(r"\{\{\s*([A-Za-z_][\w-]*)\s*\}\}")
_EXPECT = re.compile(r"^#\s*expect:\s*(\d{3})\s*$")
_KEEP = re.compile(r'^#\s*keep\s+"([\w.]+)"\s+as\s+@([A-Za-z_][\w-]*)\s*$')
_REQUEST_LINE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(\S+)(?:\s+HTTP/[\d.]+)?\s*$")


@dataclass
class HttpRequest:
    title: str
    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    expect: int | None = None
    keep: dict[str, str] = field(default_factory=dict)  # variable -> the answer's JSON field
    line: int = 0


@dataclass
class HttpFile:
    variables: dict[str, str]
    requests: list[HttpRequest]


def parse(text: str) -> HttpFile:
    variables: dict[str, str] = {}
    parsed: list[HttpRequest] = []
    for start, block in _blocks(text.splitlines()):
        title, lines = block[0].removeprefix("###").strip(), block[1:]
        request: HttpRequest | None = None
        expect: int | None = None
        keep: dict[str, str] = {}
        i = 0
        while i < len(lines) and request is None:
            line = lines[i].strip()
            i += 1
            if not line:
                continue
            if match := _VARIABLE.match(line):
                variables[match[1]] = match[2]
            elif match := _EXPECT.match(line):
                expect = int(match[1])
            elif match := _KEEP.match(line):
                keep[match[2]] = match[1]
            elif line.startswith(("#", "//")):
                continue
            elif match := _REQUEST_LINE.match(line):
                request = HttpRequest(title, match[1], match[2], expect=expect, keep=keep, line=start + i + 1)
            else:
                raise ValueError(f"line {start + i + 1}: neither a comment, a variable nor a request line: {line!r}")
        if request is None:
            continue  # a block of variables and comments only
        while i < len(lines) and lines[i].strip():
            name, sep, value = lines[i].partition(":")
            if not sep:
                raise ValueError(f"line {start + i + 2}: not a header: {lines[i]!r}")
            request.headers.append((name.strip(), value.strip()))
            i += 1
        request.body = "\n".join(lines[i + 1 :]).strip("\n")
        parsed.append(request)
    return HttpFile(variables, parsed)


def _blocks(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(index of its first line, its lines) of each `###` block; the lines before the first are one too."""
    start, block = -1, ["###"]
    for n, line in enumerate(lines):
        if line.startswith("###"):
            yield start, block
            start, block = n, [line]
        else:
            block.append(line)
    yield start, block


def substitute(text: str, variables: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        if match[1] not in variables:
            raise KeyError(f"{{{{{match[1]}}}}} is not defined")
        return substitute(variables[match[1]], variables)

    return _USE.sub(value, text)


@dataclass
class Sent:
    request: HttpRequest
    url: str
    status: int
    body: str


def send_all(http: HttpFile, overrides: Mapping[str, str], timeout: float = 10) -> list[Sent]:
    """Send every request in order, with the file's variables less `overrides`, carrying the `keep` values
    forward; the caller compares each status with the request's `expect`."""
    variables = {**http.variables, **overrides}
    sent = []
    with requests.Session() as session:
        for request in http.requests:
            url = substitute(request.url, variables)
            headers = {name: substitute(value, variables) for name, value in request.headers}
            body = substitute(request.body, variables).encode() if request.body else None
            answer = session.request(request.method, url, headers=headers, data=body, timeout=timeout)
            sent.append(Sent(request, url, answer.status_code, answer.text))
            for variable, path in request.keep.items():
                value: object = answer.json()
                for part in path.split("."):
                    value = value[part] if isinstance(value, dict) else None
                if not isinstance(value, str):
                    raise ValueError(
                        f"{request.title}: the answer has no {path!r} to keep as @{variable}: {answer.text}"
                    )
                variables[variable] = value
    return sent


def read(path: Path) -> HttpFile:
    return parse(path.read_text())
