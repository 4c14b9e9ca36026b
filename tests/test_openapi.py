"""The OpenAPI description against the running stack: schemathesis generates requests from it;
no answer is a 5xx and every answer matches the description (status, content type, schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.frontend_support import running_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("openapi"), "--workers", "1", "--flush-interval", "0.3") as pair:
        yield pair


def test_every_answer_matches_the_description_and_none_is_a_5xx(stack):
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    _, frontend = stack
    schema = schemathesis.openapi.from_url(frontend.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(headers={"X-API-Key": frontend.api_key}, checks=checks)

        check()
