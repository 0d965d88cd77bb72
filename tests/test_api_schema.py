"""Schemathesis against the API's own OpenAPI document (through WSGI, with a valid bearer token):
no 500s, every response conforms to the document (status, content type, headers, body schema),
requests that break the document are refused, and no operation works without a valid token.

The coverage phase (boundary values, wrong types, missing and unknown fields, unexpected methods:
several hundred requests) runs on one backend, PostgreSQL when available (the stricter one: string
lengths, NUL bytes, integer ranges), and the random fuzzing phase runs on every backend.
"""

from __future__ import annotations

import pytest
import schemathesis
from api_helpers import add_subscriber, make_token
from conftest import BACKENDS
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from newsletter import delivery
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection,
          unsupported_method, allow_header_conformance, ignored_auth]
MAX_EXAMPLES = 8  # per operation in the fuzzing phase: keeps the whole file well under a minute


@pytest.fixture
def schema_app(make_app):
    """An app with some data to find, and a rate limit that the fuzzer will not hit."""
    app = make_app(API_RATE_LIMIT="100000 per minute")
    with app.app_context():
        add_subscriber("anna@example.com", topics=("nyheter",))
        db.session.add(Article(source_id="s1", title="Nytt", url="https://example.org/1",
                               published_at=utcnow()))
        db.session.commit()
    yield app
    delivery.wait_for_sends(20)  # POST /digests started sends: let them end before the teardown


@pytest.fixture
def api_token(schema_app):
    return make_token(schema_app, "admin", "schemathesis")


@pytest.fixture
def api_schema(schema_app, api_token, database_url):
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    phases = {"examples": {"enabled": True}, "fuzzing": {"enabled": True},
              "coverage": {"enabled": backend == BACKENDS[-1]}, "stateful": {"enabled": False}}
    # A body over API_MAX_BODY_BYTES is refused with 413 before it is read: a rejection too.
    rejections = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
    # The token goes in through schemathesis's own auth (the document's bearerAuth scheme), so its
    # negative cases that drop or spoil the Authorization header are really sent without it.
    config = SchemathesisConfig.from_dict({
        "auth": {"openapi": {"bearerAuth": {"bearer": api_token}}},
        "phases": phases, "checks": {"negative_data_rejection": {"expected-statuses": rejections}}})
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", schema_app, config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32's lazy loader reads `node._nodeid`, which pytest 9.2 renamed (`_id`):
    # give it the attribute back so it can label each operation's subtest.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(checks=CHECKS)
