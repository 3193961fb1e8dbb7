"""requests.http, at the top of the repository: every request in it, sent in order to a real stack (the
worker's session stack: a Consul agent, three Hazelcast members, the three services under gunicorn), answers
the status it documents (`# expect: NNN`), with the `next` of one page carried to the request after it as the
file says (`# keep "next" as @next`; devstack/http_file.py reads the format)."""

from __future__ import annotations

from devstack import ROOT, http_file

REQUESTS = ROOT / "requests.http"


def test_every_request_in_requests_http_answers_the_status_it_documents(stack):
    http = http_file.read(REQUESTS)
    # The file's addresses are those of ./scripts/up; the test's stack is on free ports.
    stack_addresses = {
        "host": stack.facade.url,
        "logging": stack.logging[0].url,
        "messages": stack.messages[0].url,
        "metrics": f"http://127.0.0.1:{stack.facade.metrics_port}",
    }
    assert set(stack_addresses) <= set(http.variables), "requests.http no longer names these addresses"
    undocumented = [r.title for r in http.requests if r.expect is None]
    assert not undocumented, f"requests without an `# expect: NNN` line: {undocumented}"

    sent = http_file.send_all(http, stack_addresses)

    wrong = [
        f"line {s.request.line}, {s.request.title}: {s.request.method} {s.url[:120]} answered {s.status}, "
        f"documented {s.request.expect}: {s.body[:200]}"
        for s in sent
        if s.status != s.request.expect
    ]
    assert not wrong, "\n".join(wrong)
    # The following page was read with the cursor the first page gave, not with the file's stand-in.
    following = [s for s in sent if "{{next}}" in s.request.url]
    assert following and all(f"after={http.variables['next']}" not in s.url for s in following)
    # Every answer the README and docs/API.md document for these calls, bad inputs of each kind included.
    assert {s.status for s in sent} >= {200, 201, 400, 404, 405, 409, 415, 421, 422}
