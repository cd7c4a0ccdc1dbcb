"""Property-based fuzzing of every operation in our OpenAPI document (schemathesis, every check).

Valid (positive) and schema-violating (negative) requests are generated for each operation and sent, with an
admin API key, to the real app with the tiny model and the real database (each test's writes are rolled
back afterwards). Every response must pass all of schemathesis' checks: no 5xx, only declared statuses,
content types and headers, bodies matching the declared schemas (errors included), invalid input
rejected, valid input accepted, and no access without the key.

A stateful run then chains operations along the links schemathesis infers (an id in one response is a path
parameter of another: create, read, change and delete a subscription; flag, detach or merge what a receipt
recorded) with the same checks, use-after-free included.

Documented exception (docs/api.md, "The OpenAPI document"): a schema-valid request may still be refused
with one of ``SCHEMA_CANNOT_SAY`` — an opaque cursor the API did not issue, block files that are not images,
a time outside 1970..9000 — because JSON Schema cannot express those conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import CHECKS, CheckFunction, load_all_checks
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.settings import Settings

EXAMPLES_PER_OPERATION = 25
STATEFUL_SEQUENCES = 15
STATEFUL_STEPS = 6
API_KEY = "fuzzing-admin-key-0123456789"

SCHEMA_CANNOT_SAY = {
    "invalid_cursor": "cursors are opaque: any string is schema-valid, only issued ones are accepted",
    "invalid_image": "a multipart file is schema-valid whether or not it decodes as an image",
    "unsupported_image_type": "the same: the schema cannot require image bytes",
    "invalid_request": "block count and similar cross-field rules",
    "validation_error": "times outside 1970..9000 (JSON Schema has no date range), business-field checks "
    "such as the SSCC check digit, and a null sent as a multipart field (multipart has no null)",
}
"""Error types with which the service may refuse a schema-valid request, and why."""

BindToTestConnection = Callable[[TestClient], AbstractContextManager[TestClient]]
SettingsFactory = Callable[..., Settings]

load_all_checks()
ALL_CHECKS = cast(list[CheckFunction], CHECKS.get_all())  # built-in checks are all functions


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


@pytest.fixture(scope="module")
def authenticated_app(
    database_url: str, tiny_checkpoint: Path, make_settings: SettingsFactory
) -> Iterator[TestClient]:
    """The app with API keys configured, so the checks can tell that a request without one is refused."""
    from app.main import create_app

    settings = make_settings(database_url, tiny_checkpoint, api_keys=[f"admin:fuzzer:{API_KEY}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _refused_for_a_documented_reason(body: Any) -> bool:
    return isinstance(body, dict) and body.get("type") in SCHEMA_CANNOT_SAY


@pytest.mark.parametrize(("label", "mode"), _fuzz_targets(), ids=lambda value: str(value))
def test_every_generated_request_passes_every_check(
    authenticated_app: TestClient,
    bind_to_test_connection: BindToTestConnection,
    label: str,
    mode: GenerationMode,
) -> None:
    with bind_to_test_connection(authenticated_app) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        (operation,) = [operation for operation in operations if operation.label == label]
        strategy = operation.as_strategy(generation_mode=mode)
        headers = {"X-API-Key": API_KEY}

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
            response = case.call(headers=headers)
            body = response.json() if response.status_code >= 400 else None
            excluded = [positive_data_acceptance] if _refused_for_a_documented_reason(body) else []
            case.validate_response(response, checks=ALL_CHECKS, excluded_checks=excluded, headers=headers)
            if body is not None:
                assert set(body) == {"type", "detail"}, body
                assert isinstance(body["detail"], str), body

        check()


def test_the_document_declares_the_one_error_body_for_every_error(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["ErrorResponse"]["required"] == ["type", "detail"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            if operation.get("parameters") or operation.get("requestBody"):
                assert "validation_error" in operation["responses"]["422"]["description"], (method, path)


def test_stateful_sequences_pass_every_check(
    authenticated_app: TestClient, bind_to_test_connection: BindToTestConnection
) -> None:
    """Sequences that feed one response into the next request (links schemathesis infers: a created
    subscription read, changed and deleted; a registered pallet's history), with the same checks, so
    use-after-free and resource availability are checked too."""
    with bind_to_test_connection(authenticated_app) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        headers = {"X-API-Key": API_KEY}

        class Sequences(schema.as_state_machine()):  # type: ignore[misc]
            def get_call_kwargs(self, case: Case) -> dict[str, Any]:
                return {"headers": headers}

            def validate_response(
                self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
            ) -> None:
                body = response.json() if response.status_code >= 400 else None
                excluded: list[CheckFunction] = (
                    [positive_data_acceptance] if _refused_for_a_documented_reason(body) else []
                )
                case.validate_response(
                    response,
                    checks=ALL_CHECKS,
                    excluded_checks=excluded,
                    headers=headers,
                    transport_kwargs=kwargs,
                )
                if body is not None:
                    assert set(body) == {"type", "detail"}, body

        run_state_machine_as_test(
            Sequences,
            settings=settings(
                max_examples=STATEFUL_SEQUENCES,
                stateful_step_count=STATEFUL_STEPS,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            ),
        )
