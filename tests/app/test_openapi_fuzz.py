"""Property-based fuzzing of every operation in our OpenAPI document (schemathesis): no input gives a 5xx.

Valid (positive) and schema-violating (negative) requests are generated for each operation and sent to the
real app with the tiny model and the real database (each test's writes are rolled back afterwards).
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

EXAMPLES_PER_OPERATION = 25


def _fuzz_targets() -> list[tuple[str, GenerationMode]]:
    """Every operation with valid inputs; those that take inputs also with invalid ones."""
    from app.main import create_app
    from app.settings import Settings

    schema = schemathesis.openapi.from_dict(create_app(Settings(database_url="unused")).openapi())
    targets = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # our own schema always parses
        targets.append((operation.label, GenerationMode.POSITIVE))
        if operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"):
            targets.append((operation.label, GenerationMode.NEGATIVE))
    return sorted(targets)


@pytest.mark.parametrize(("label", "mode"), _fuzz_targets(), ids=lambda value: str(value))
def test_no_generated_request_gets_a_server_error(
    client: TestClient, label: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    (operation,) = [operation for operation in operations if operation.label == label]
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(strategy)
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"type", "detail"}, body

    check()
