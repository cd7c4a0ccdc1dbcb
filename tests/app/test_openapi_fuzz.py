"""Property-based fuzzing of every operation in our OpenAPI document (schemathesis, every check).

Valid (positive) and schema-violating (negative) requests are generated for each operation and sent, with an
admin API key, to the real app with the tiny model and the real database (each test's writes are rolled
back afterwards). Every response must pass all of schemathesis' checks: no 5xx, only declared statuses,
content types and headers, bodies matching the declared schemas (errors included), invalid input
rejected, valid input accepted, and no access without the key.

A stateful run then chains operations along the document's links (a receipt's or dispatch's pallet read with
its history; a created subscription read, changed and deleted) and those schemathesis infers (an id in one
response is a path parameter of another: flag, detach or review what a receipt recorded) with the same
checks, use-after-free included. Its receipts and dispatches carry decodable block images (a schema cannot ask
for image bytes), so some succeed and their links are followed to a real pallet.

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
from api_testkit import noise_blocks
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import CHECKS, CheckFunction, load_all_checks
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.hooks import HookContext
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.settings import Settings

EXAMPLES_PER_OPERATION = 25
STATEFUL_SEQUENCES = 15
STATEFUL_STEPS = 6
API_KEY = "fuzzing-admin-key-0123456789"
RECORDINGS = ("POST /v1/receipts", "POST /v1/dispatches")

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


@pytest.mark.parametrize("number", ["1700000000", "3.6e-14", "-5"])
def test_a_number_is_not_a_date_time(client: TestClient, number: str) -> None:
    """The document says ``format: date-time``; pydantic alone would read a number as Unix seconds."""
    for path in (f"/v1/events?since={number}", f"/v1/pallets?seen_since={number}"):
        response = client.get(path)
        assert response.status_code == 422, path
        assert "not a number" in response.json()["detail"]


DOCUMENTED_LINKS = {
    "/v1/receipts": {"GetPallet", "ListPalletEvents"},
    "/v1/dispatches": {"GetPallet", "ListPalletEvents"},
    "/v1/webhooks": {"GetSubscription", "UpdateSubscription", "DeleteSubscription"},
}
"""Links declared on the 201 response of each creating POST (the ids schemathesis cannot infer)."""


def test_created_resources_link_to_the_operations_on_them(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = {
        operation["operationId"]: (path, operation)
        for path, item in spec["paths"].items()
        for operation in item.values()
    }
    for path, names in DOCUMENTED_LINKS.items():
        links = spec["paths"][path]["post"]["responses"]["201"]["links"]
        assert set(links) == names, path
        for link in links.values():
            target_path, target = operations[link["operationId"]]
            (parameter,) = link["parameters"]
            assert f"{{{parameter}}}" in target_path
            assert parameter in {p["name"] for p in target["parameters"] if p["in"] == "path"}
    transitions = dir(schemathesis.openapi.from_dict(spec).as_state_machine())
    for path, names in DOCUMENTED_LINKS.items():
        source = "POST" + path.replace("/", "_") + "___201_"
        for name in names:
            assert any(t.startswith(source + name + "__") for t in transitions), (path, name)


def test_stateful_sequences_pass_every_check(
    authenticated_app: TestClient, bind_to_test_connection: BindToTestConnection
) -> None:
    """Sequences that feed one response into the next request (links schemathesis infers: a created
    subscription read, changed and deleted; a registered pallet's history), with the same checks, so
    use-after-free and resource availability are checked too."""
    with bind_to_test_connection(authenticated_app) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        headers = {"X-API-Key": API_KEY}

        @schema.hook("flatmap_body")
        def real_block_images(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
            """Decodable blocks for receipts and dispatches (the schema cannot ask for image bytes), so
            recordings succeed and their links to the pallet are followed."""
            if (
                context.operation is None
                or context.operation.label not in RECORDINGS
                or not isinstance(body, dict)
            ):
                return st.just(body)
            fields = {name: value for name, value in body.items() if name not in ("blocks", "sides")}
            return st.integers(0, 2**16).map(lambda seed: {**fields, "blocks": noise_blocks(seed, 3)})

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
