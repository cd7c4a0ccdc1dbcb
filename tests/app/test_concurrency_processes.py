"""More than one API process on one database: identification stays atomic across processes, and
``palletreid serve --workers N`` starts the embedded PostgreSQL once for N worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from api_testkit import FreshDatabase, block_files, free_port, noise_blocks
from sqlalchemy import create_engine, func, select

from app.commands.serve import worker_environment
from app.db.migrations import current_revisions, head_revisions, upgrade_to_head
from app.db.tables import Pallet
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 240.0
"""A cold start imports torch in every process; a loaded two-core machine takes minutes (not a speed test)."""
DISPATCHES_PER_SERVER = 3


def _environment(tiny_checkpoint: Path, images: Path, database_url: str | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("DATABASE_URL", "PALLETREID_DATABASE_URL", "PALLETREID_API_KEYS", "PALLETREID_API_KEYS_FILE")
    }
    env.update(
        {
            "PALLETREID_MODEL_PATH": str(tiny_checkpoint),
            "PALLETREID_MODEL_THREADS": "1",
            "PALLETREID_IMAGE_STORE": str(images),
            # The random-weight test model carries no calibrated decision parameters: all three thresholds.
            "PALLETREID_BLOCK_THRESHOLD": "0.995",
            "PALLETREID_MIN_VOTES": "2",
            "PALLETREID_SCORE_THRESHOLD": "0.995",
        }
    )
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


@contextmanager
def _serving(
    arguments: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``palletreid serve`` on a free loopback port until the block ends; yields its URL and process."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *arguments,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while True:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
                try:
                    if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            yield base_url, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def _dispatch_everywhere(base_urls: Sequence[str], blobs: list[bytes]) -> list[httpx.Response]:
    """The same dispatch sent ``DISPATCHES_PER_SERVER`` times to each server, all in flight together."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        return await asyncio.gather(
            *(
                client.post(f"{base_url}/v1/dispatches", files=block_files(blobs))
                for _ in range(DISPATCHES_PER_SERVER)
                for base_url in base_urls
            )
        )


def _registered_once(responses: Sequence[httpx.Response]) -> str:
    assert [response.status_code for response in responses] == [201] * len(responses), [
        response.text for response in responses
    ]
    bodies = [response.json() for response in responses]
    assert sorted(body["decision"] for body in bodies) == ["matched"] * (len(bodies) - 1) + ["registered"]
    (pallet,) = {body["pallet_id"] for body in bodies}
    return str(pallet)


def _pallets(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(Pallet)).scalar_one())
    finally:
        engine.dispose()


def test_two_server_processes_register_a_concurrently_dispatched_unknown_pallet_once(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with fresh_database() as url:
        upgrade_to_head(url)
        env = _environment(tiny_checkpoint, tmp_path / "images", url)
        with (
            _serving(["--no-migrate"], env, tmp_path / "first.log") as (first, _),
            _serving(["--no-migrate"], env, tmp_path / "second.log") as (second, _),
        ):
            responses = asyncio.run(_dispatch_everywhere([first, second], noise_blocks(seed=401, count=3)))
        _registered_once(responses)
        assert _pallets(url) == 1


def test_serve_workers_share_one_embedded_database_started_by_the_parent(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with tempfile.TemporaryDirectory(prefix="palletreid-workers-") as directory:
        data_dir = Path(directory)
        env = _environment(tiny_checkpoint, tmp_path / "images", None)
        with _serving(["--workers", "2", "--data-dir", str(data_dir)], env, tmp_path / "serve.log") as (
            base_url,
            parent,
        ):
            workers = [
                child
                for child in psutil.Process(parent.pid).children()
                if "spawn_main" in " ".join(child.cmdline())
            ]
            assert len(workers) == 2, [child.cmdline() for child in psutil.Process(parent.pid).children()]
            responses = asyncio.run(_dispatch_everywhere([base_url], noise_blocks(seed=402, count=3)))
            _registered_once(responses)
            postmaster = data_dir / "pgdata" / "postmaster.pid"
            assert postmaster.exists(), "one embedded server, in the parent's data directory"
        assert parent.returncode == 0, (tmp_path / "serve.log").read_text()
        assert not postmaster.exists(), "the parent stopped the embedded server when it exited"


def test_workers_get_the_database_and_a_share_of_the_cores() -> None:
    settings = Settings(database_url="postgresql+psycopg://db/palletreid", data_dir=Path("/srv/var"))
    assert worker_environment(settings, workers=4, cpus=16) == {
        "PALLETREID_DATABASE_URL": "postgresql+psycopg://db/palletreid",
        "PALLETREID_DATA_DIR": "/srv/var",
        "PALLETREID_MODEL_THREADS": "4",
    }
    assert worker_environment(settings, workers=4, cpus=2)["PALLETREID_MODEL_THREADS"] == "1"
    pinned = settings.model_copy(update={"model_threads": 3})
    assert "PALLETREID_MODEL_THREADS" not in worker_environment(pinned, workers=2, cpus=16)


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_serve_refuses_a_worker_count_below_one(workers: str) -> None:
    from app.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser(["serve", "--workers", workers]).parse_args(["serve", "--workers", workers])


def test_migrate_only_applies_the_migrations_and_exits(
    fresh_database: FreshDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-shot job of a deployment with several replicas (they start with --no-migrate)."""
    from app.cli import main

    with fresh_database() as url:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.delenv("PALLETREID_DATABASE_URL", raising=False)
        assert main(["serve", "--migrate-only"]) == 0
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                assert current_revisions(connection) == head_revisions()
        finally:
            engine.dispose()
