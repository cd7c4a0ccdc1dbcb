"""The service as installed: migrations found as package resources and frozen per revision, a non-editable
install that migrates and serves, and a runtime that loads none of the offline tooling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from api_testkit import FreshDatabase

import migrations
from app.db.migrations import SCRIPT_LOCATION, alembic_config

REPOSITORY = Path(__file__).resolve().parents[2]
OFFLINE_MODULES = ("models.training", "models.evaluation", "models.synth", "bench", "matplotlib")
"""Packages (and their submodules) the service must never load."""


def test_migrations_are_found_as_a_package_resource() -> None:
    config = alembic_config()
    assert config.get_main_option("script_location") == SCRIPT_LOCATION == "migrations:"
    scripts = ScriptDirectory.from_config(config)
    assert Path(scripts.dir).resolve() == Path(migrations.__file__).resolve().parent
    revisions = {script.revision for script in scripts.walk_revisions()}
    assert {"0001", "0002"} <= revisions
    assert len(scripts.get_heads()) == 1, "one line of history"


def _run_python(code: str, *, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


SERVE_ONE_REQUEST = """
    import json, os, sys
    from fastapi.testclient import TestClient
    from app.db.migrations import upgrade_to_head
    from app.main import create_app
    from app.settings import Settings

    url = os.environ["TEST_DATABASE_URL"]
    if os.environ.get("MIGRATE"):
        upgrade_to_head(url)
    settings = Settings(
        database_url=url,
        model_path=os.environ.get("TEST_MODEL_PATH") or None,
        model_threads=1,
        block_threshold=0.995,
        min_votes=3,
        score_threshold=0.995,
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        blocks = [("blocks", (f"b{i}.png", open(os.environ["TEST_IMAGE"], "rb").read(), "image/png"))
                  for i in range(3)]
        receipt = client.post("/v1/receipts", files=blocks)
    import app, migrations
    print(json.dumps({
        "ready": ready.status_code,
        "receipt": receipt.status_code,
        "decision": receipt.json().get("decision"),
        "app": app.__file__,
        "migrations": migrations.__file__,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("models", "bench", "matplotlib")),
    }))
"""


@pytest.fixture(scope="module")
def block_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from api_testkit import noise_blocks

    path = tmp_path_factory.mktemp("image") / "block.png"
    path.write_bytes(noise_blocks(seed=7, count=1)[0])
    return path


def test_serving_a_request_loads_none_of_the_offline_tooling(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, block_image: Path
) -> None:
    with fresh_database() as url:
        result = _run_python(
            SERVE_ONE_REQUEST,
            cwd=REPOSITORY,
            env={
                "TEST_DATABASE_URL": url,
                "MIGRATE": "1",
                "TEST_MODEL_PATH": str(tiny_checkpoint),
                "TEST_IMAGE": str(block_image),
            },
        )
    assert (result["ready"], result["receipt"], result["decision"]) == (200, 201, "registered")
    loaded = result["loaded"]
    assert isinstance(loaded, list) and "models.runtime.inference" in loaded
    offline = [
        m for m in loaded if m in OFFLINE_MODULES or m.startswith(tuple(f"{p}." for p in OFFLINE_MODULES))
    ]
    assert offline == []


@pytest.mark.slow
def test_a_non_editable_install_migrates_and_serves(
    fresh_database: FreshDatabase, block_image: Path, tmp_path: Path
) -> None:
    """``pip install .`` (no editable link to the checkout) into a throw-away target, run from elsewhere."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    for package in ("app", "models", "migrations", "bench"):
        shutil.copytree(
            REPOSITORY / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with fresh_database() as url:
        result = _run_python(
            SERVE_ONE_REQUEST,
            cwd=elsewhere,
            env={
                "PYTHONPATH": str(target),
                "TEST_DATABASE_URL": url,
                "MIGRATE": "1",
                "TEST_IMAGE": str(block_image),
            },
        )
    assert (result["ready"], result["receipt"]) == (200, 201)
    assert str(result["app"]).startswith(str(target)) and str(result["migrations"]).startswith(str(target))
