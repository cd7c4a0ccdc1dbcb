"""The embedded PostgreSQL is sized to the machine for its job: the HNSW index in shared buffers, index builds
in memory and in parallel."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import embedded
from app.db.embedded import _in_units, embedded_postgres, server_settings, tuned_settings

GIB = 1024**3


def test_settings_follow_the_machine() -> None:
    small = tuned_settings(2 * GIB, 2)
    assert small == {
        "shared_buffers": "512MB",
        "effective_cache_size": "1536MB",
        "maintenance_work_mem": "256MB",
        "max_parallel_maintenance_workers": "1",
    }
    large = tuned_settings(256 * GIB, 32)
    assert large["shared_buffers"] == "65536MB"
    assert large["maintenance_work_mem"] == "16384MB", "capped: index builds do not need more"
    assert large["max_parallel_maintenance_workers"] == "31"
    assert tuned_settings(256 * 1024 * 1024, 1)["shared_buffers"] == "128MB", "never below the default"


def test_values_compare_in_the_units_postgresql_shows() -> None:
    assert _in_units("512MB", "8kB") == "65536"
    assert _in_units("256MB", "kB") == "262144"
    assert _in_units("3", None) == "3"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's private temporary root, which the server's own system user cannot enter."""
    with tempfile.TemporaryDirectory(prefix="palletreid-tuning-") as directory:
        yield Path(directory)


def test_the_embedded_server_runs_with_the_tuned_settings(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "machine_memory_bytes", lambda: GIB)
    with embedded_postgres(data_dir) as url:
        shown = server_settings(url, tuned_settings(GIB, 2))
    assert shown["shared_buffers"] == "256MB", "took effect: the first start restarts the server once"
    assert shown["effective_cache_size"] == "768MB"
    assert shown["maintenance_work_mem"] == "128MB"

    # A second start finds the settings in place and needs no restart.
    with embedded_postgres(data_dir) as url:
        assert server_settings(url, tuned_settings(GIB, 2))["shared_buffers"] == "256MB"
