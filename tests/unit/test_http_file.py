"""devstack/http_file.py reads the `.http` format that VS Code's REST Client and JetBrains' HTTP client share."""

from __future__ import annotations

import pytest

from devstack import ROOT, http_file

SAMPLE = """# a file comment
@host = http://127.0.0.1:8080
@path = /facade

### First
# expect: 201
// another comment
POST {{host}}{{path}} HTTP/1.1
Content-Type: application/json
Idempotency-Key: k-1

{"msg": "hello"}


### Second, following a cursor
# expect: 200
# keep "next" as @next
GET {{host}}/facade?limit=1

###
@late = 2
GET {{host}}/facade?limit={{late}}&after={{next}}
"""


def test_a_file_gives_its_variables_and_each_request_with_headers_body_and_directives():
    http = http_file.parse(SAMPLE)

    assert http.variables == {"host": "http://127.0.0.1:8080", "path": "/facade", "late": "2"}
    first, second, third = http.requests
    assert (first.title, first.method, first.url, first.expect) == ("First", "POST", "{{host}}{{path}}", 201)
    assert first.headers == [("Content-Type", "application/json"), ("Idempotency-Key", "k-1")]
    assert first.body == '{"msg": "hello"}'
    assert first.line == SAMPLE.splitlines().index("POST {{host}}{{path}} HTTP/1.1") + 1
    assert (second.expect, second.keep, second.body) == (200, {"next": "next"}, "")
    assert third.expect is None and third.title == ""


def test_variables_are_substituted_and_an_undefined_one_is_an_error():
    assert http_file.substitute("{{a}}/x{{ b }}", {"a": "{{b}}", "b": "1"}) == "1/x1"
    with pytest.raises(KeyError, match="next"):
        http_file.substitute("?after={{next}}", {})


def test_a_line_that_is_no_request_comment_or_variable_is_refused_with_its_number():
    with pytest.raises(ValueError, match="line 3"):
        http_file.parse("### one\n# expect: 200\nFETCH http://x/\n")


def test_requests_http_parses_and_documents_a_status_for_every_request():
    http = http_file.read(ROOT / "requests.http")
    assert len(http.requests) >= 30
    assert all(request.expect for request in http.requests)
    assert {"host", "logging", "messages", "metrics", "key", "id", "next"} <= set(http.variables)
