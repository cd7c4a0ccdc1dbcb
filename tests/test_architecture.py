"""The one-way import arrows of docs/architecture.md, checked on the source of every package."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def _imports(package: str) -> Iterator[tuple[str, str]]:
    """(file, imported module) for every import statement under ``package`` (relative imports resolved)."""
    for path in sorted((REPOSITORY / package).rglob("*.py")):
        module_parts = path.relative_to(REPOSITORY).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield str(path.relative_to(REPOSITORY)), alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(module_parts[: len(module_parts) - node.level])
                    yield str(path.relative_to(REPOSITORY)), f"{base}.{node.module}" if node.module else base
                elif node.module:
                    yield str(path.relative_to(REPOSITORY)), node.module


def _first_party(module: str) -> bool:
    return module.split(".")[0] in {"app", "models", "bench", "migrations"}


def _within(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(f"{prefix}.") for prefix in prefixes)


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        # The service uses only the runtime core of the model side.
        ("app", ("app", "models.runtime")),
        # The runtime core stands alone: no training, evaluation, synthetic data, service or benchmarks.
        ("models/runtime", ("models.runtime",)),
        # Offline model packages build on the runtime core; models never import the service.
        ("models/training", ("models.runtime", "models.training")),
        ("models/evaluation", ("models.runtime", "models.training", "models.evaluation")),
        ("models/synth", ("models.synth", "models.runtime")),
        ("models/cli", ("models",)),
        # Benchmarks drive the service and its runtime, with synthetic captures as input.
        ("bench", ("bench", "app", "models.runtime", "models.synth")),
        # Migrations: only the environment script reads the service's metadata and settings.
        ("migrations", ("app.db", "app.settings")),
    ],
)
def test_imports_follow_the_one_way_arrows(package: str, allowed: tuple[str, ...]) -> None:
    wrong = [
        f"{source}: {module}"
        for source, module in _imports(package)
        if _first_party(module) and not _within(module, *allowed)
    ]
    assert wrong == []


def test_migration_revisions_import_nothing_of_the_project() -> None:
    """A revision that imported the ORM's constants would change its meaning when they change."""
    wrong = [f"{s}: {m}" for s, m in _imports("migrations/versions") if _first_party(m)]
    assert wrong == []
