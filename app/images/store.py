"""Content-addressed file store of block images: ``<root>/sha256/<2 hex>/<2 hex>/<64 hex>``.

A file is written to a temporary name in ``<root>/tmp``, flushed to disk (``fsync``), then renamed into place
and the directory entry flushed too, so a stored file is always complete: a crash leaves at most a temporary
file or a complete file that no row references yet, both removed by ``palletreid gc``. Identical bytes are
stored once. The store knows nothing of the database; who may delete what is decided by the callers
(``app.images.service``), under the identification lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

MEDIA_TYPES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"WEBP", 8, "image/webp"),
)
"""Signature, its offset and the media type of each format the image loader accepts."""


def media_type_of(data: bytes) -> str:
    """The media type of an accepted image, from its leading bytes (the loader already refused others)."""
    for signature, offset, media_type in MEDIA_TYPES:
        if data[offset : offset + len(signature)] == signature:
            return media_type
    raise ValueError("not a JPEG, PNG or WebP image")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredFile:
    sha256: str
    path: Path
    size_bytes: int


class ImageStore:
    """Files named by the SHA-256 of their bytes under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _objects(self) -> Path:
        return self.root / "sha256"

    @property
    def _tmp(self) -> Path:
        return self.root / "tmp"

    def path_for(self, digest: str) -> Path:
        if not _SHA256_HEX.fullmatch(digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return self._objects / digest[:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` durably; returns its SHA-256 and whether this call created the file."""
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.is_file():
            return digest, False
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        temporary = self._tmp / f"{uuid.uuid4().hex}.tmp"
        try:
            with temporary.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
        return digest, True

    def read(self, digest: str) -> bytes | None:
        """The stored bytes, or ``None`` if the file is not (or no longer) there."""
        try:
            return self.path_for(digest).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, digest: str) -> bool:
        """Remove the file; whether it was there."""
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def files(self) -> Iterator[StoredFile]:
        """Every stored file (names that are not SHA-256 digests are not the store's and are left alone)."""
        if not self._objects.is_dir():
            return
        for path in sorted(self._objects.glob("*/*/*")):
            if _SHA256_HEX.fullmatch(path.name) and path.is_file():
                yield StoredFile(sha256=path.name, path=path, size_bytes=path.stat().st_size)

    def stale_temporary_files(self, *, older_than_seconds: float) -> list[Path]:
        """Temporary files of writes that crashed (a live write takes milliseconds, not ``older_than``)."""
        if not self._tmp.is_dir():
            return []
        cutoff = time.time() - older_than_seconds
        return [path for path in sorted(self._tmp.glob("*.tmp")) if path.stat().st_mtime < cutoff]


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry (the rename) to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
