"""Schemathesis against the server's own OpenAPI: every operation, generated inputs, with a token."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.checks import positive_data_acceptance

from server.app import create_app

# A schema-valid file part is any bytes; only a decodable PNG/JPEG is accepted (415/422 otherwise), which
# JSON Schema cannot express. Everything else about these two operations is still checked.
UPLOADS = {"POST /v1/images", "POST /v1/analyses"}
# These tests send an API token, and signing out with one answers 400 not_a_session (a session token is
# needed, which the schema cannot say); tests/test_auth.py signs out of real sessions.
NOT_A_SESSION = {"DELETE /v1/auth/sessions/current"}

# The operations' labels from the schema alone: collecting must not start a server (which would load the
# models into the user's own BRANET_HOME).
OPERATIONS = sorted(op.ok().label for op in schemathesis.openapi.from_dict(create_app().openapi()).get_all_operations())


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_asgi("/openapi.json", api.app)


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_the_openapi(api_schema, alice, label):
    operation = next(op.ok() for op in api_schema.get_all_operations() if op.ok().label == label)

    @given(case=operation.as_strategy())
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        excluded = [positive_data_acceptance] if label in UPLOADS | NOT_A_SESSION else []
        case.call_and_validate(headers=alice, excluded_checks=excluded)
    check()


def test_every_reference_resolves_and_operations_have_examples(api):
    spec = api.get("/openapi.json").json()
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            refs.update([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(spec)
    missing = [r for r in refs if r.split("/")[-1] not in spec["components"]["schemas"]]
    assert not missing
    for name in ("Prompt", "AnalysisRequest", "AnalysisOut", "SegmentationOut", "ImageOut"):
        assert spec["components"]["schemas"][name]["examples"], name
