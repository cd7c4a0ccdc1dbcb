"""API keys and roles: 401 without a known key, 403 for the wrong role, keys from env and file, not logged."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient

from app.cli import main as cli_main
from app.errors import ConfigurationError
from app.main import create_app
from app.security import KeyRing, Role, ensure_safe_bind, parse_key_entry
from app.settings import Settings

STATION_KEY = "station-secret-0123456789"
READER_KEY = "reader-secret-0123456789"
ADMIN_KEY = "admin-secret-0123456789abc"
HASHED_STATION_KEY = "file-station-secret-987654321"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    digest = hashlib.sha256(HASHED_STATION_KEY.encode()).hexdigest()
    path.write_text(f"# stations\nstation:gate-7:{digest}  # hashed\n\nadmin:ops:{ADMIN_KEY}\n")
    return path


@pytest.fixture(scope="module")
def keyed_app_client(
    database_url: str,
    tiny_checkpoint: Path,
    make_settings: Callable[..., Settings],
    keys_file: Path,
) -> Iterator[TestClient]:
    settings = make_settings(
        database_url,
        tiny_checkpoint,
        api_keys=f"station:gate-3:{STATION_KEY}, reader:{READER_KEY}",
        api_keys_file=keys_file,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def keyed(
    keyed_app_client: TestClient,
    bind_to_test_connection: Callable[[TestClient], AbstractContextManager[TestClient]],
) -> Iterator[TestClient]:
    with bind_to_test_connection(keyed_app_client) as client:
        yield client


def _receipt(client: TestClient, headers: dict[str, str]) -> int:
    return client.post(
        "/v1/receipts", files=block_files(noise_blocks(seed=60, count=1)), headers=headers
    ).status_code


@pytest.mark.parametrize(
    ("headers", "write", "read"),
    [
        ({}, 401, 401),
        ({"X-API-Key": "not-a-key-at-all-000"}, 401, 401),
        ({"Authorization": f"Basic {STATION_KEY}"}, 401, 401),
        ({"X-API-Key": STATION_KEY}, 201, 403),
        ({"Authorization": f"Bearer {STATION_KEY}"}, 201, 403),
        ({"X-API-Key": HASHED_STATION_KEY}, 201, 403),
        ({"X-API-Key": READER_KEY}, 403, 200),
        ({"Authorization": f"Bearer {ADMIN_KEY}"}, 201, 200),
    ],
    ids=["none", "unknown", "basic", "station", "station-bearer", "station-from-file", "reader", "admin"],
)
def test_roles_decide_who_may_write_and_read(
    keyed: TestClient, headers: dict[str, str], write: int, read: int
) -> None:
    assert _receipt(keyed, headers) == write
    for path in ("/v1/events", "/v1/pallets"):
        response = keyed.get(path, headers=headers)
        assert response.status_code == read, response.text
        if read >= 400:
            assert response.json()["type"] == {401: "unauthenticated", 403: "forbidden"}[read]
    if write == 401:
        assert keyed.get("/v1/events", headers=headers).headers["WWW-Authenticate"] == "Bearer"


def test_probes_and_docs_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    schema = keyed.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"ApiKey", "BearerApiKey"}
    assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert {"ApiKey": []} in schema["paths"]["/v1/receipts"]["post"]["security"]
    assert {"ApiKey": []} in schema["paths"]["/v1/events"]["get"]["security"]
    assert "security" not in schema["paths"]["/readyz"]["get"]


def test_writes_log_the_key_name_and_role_never_the_key(
    keyed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        assert _receipt(keyed, {"X-API-Key": STATION_KEY}) == 201
        assert _receipt(keyed, {"X-API-Key": "wrong-key-0000000000"}) == 401
    assert "receipt by key gate-3 (role station)" in caplog.text
    assert "unknown API key" in caplog.text
    assert STATION_KEY not in caplog.text
    assert "wrong-key-0000000000" not in caplog.text


def test_key_entries_are_parsed_and_hashed() -> None:
    plain = parse_key_entry(f"Reader:{READER_KEY}", source="test")
    assert plain.role is Role.READER
    assert plain.digest == hashlib.sha256(READER_KEY.encode()).digest()
    assert plain.name.startswith("reader-")
    named = parse_key_entry(f"admin:ops:{ADMIN_KEY}", source="test")
    assert (named.name, named.role) == ("ops", Role.ADMIN)
    ring = KeyRing([plain, named])
    assert ring.authenticate(ADMIN_KEY) is not None
    assert ring.authenticate(ADMIN_KEY + "x") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("root:0123456789abcdef0123", "unknown role"),
        ("station", "role:secret"),
        ("station:short", "shorter than 16"),
        ("station:bad name:0123456789abcdef0123", "key name"),
    ],
)
def test_bad_key_entries_refuse_to_start(entry: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_app(Settings.model_validate({"database_url": "unused", "api_keys": [entry]}))


def test_duplicate_key_names_refuse_to_start() -> None:
    with pytest.raises(ConfigurationError, match="unique"):
        create_app(
            Settings.model_validate(
                {"database_url": "unused", "api_keys": f"station:a:{STATION_KEY},admin:a:{ADMIN_KEY}"}
            )
        )


def test_without_keys_only_loopback_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    no_keys = KeyRing([])
    for host in ("127.0.0.1", "::1", "localhost"):
        ensure_safe_bind(host, no_keys)
    with pytest.raises(ConfigurationError, match="without API keys"):
        ensure_safe_bind("0.0.0.0", no_keys)
    ensure_safe_bind("0.0.0.0", KeyRing([parse_key_entry(f"admin:{ADMIN_KEY}", source="test")]))

    monkeypatch.delenv("PALLETREID_API_KEYS", raising=False)
    monkeypatch.delenv("PALLETREID_API_KEYS_FILE", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2


def test_auth_off_is_announced_at_start(
    database_url: str,
    tiny_checkpoint: Path,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(make_settings(database_url, tiny_checkpoint))),
    ):
        pass
    assert "AUTHENTICATION IS OFF" in caplog.text
