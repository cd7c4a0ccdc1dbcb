"""API keys and roles.

Keys come from ``PALLETREID_API_KEYS`` and/or ``PALLETREID_API_KEYS_FILE``; each entry is ``role:secret`` or
``role:name:secret``. Only the SHA-256 of each secret is kept in memory (a secret given as 64 hex digits *is*
such a digest, so key files need not hold plain keys). A presented key is hashed and compared with every
configured digest in constant time, so neither timing nor early exits reveal which keys exist.

Without any key, authentication is off: the service then only binds to loopback (``ensure_safe_bind``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.errors import ConfigurationError
from app.settings import Settings

logger = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class Role(StrEnum):
    STATION = "station"
    """Camera stations: post receipts and dispatches."""
    READER = "reader"
    """Warehouse systems and dashboards: read pallets, histories and the event feed."""
    ADMIN = "admin"
    """Everything."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the key's name and role (never the key)."""

    name: str
    role: Role

    def may_act_as(self, role: Role) -> bool:
        return self.role in (role, Role.ADMIN)


ANONYMOUS = Principal(name="anonymous", role=Role.ADMIN)
"""The caller when authentication is off (no keys configured; loopback only)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    role: Role
    digest: bytes
    """SHA-256 of the secret."""


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_key_entry(entry: str, *, source: str) -> ApiKey:
    """``role:secret`` or ``role:name:secret``; a 64-hex-digit secret is the SHA-256 of the key."""
    parts = entry.strip().split(":", 2)
    if len(parts) < 2 or not all(parts):
        raise ConfigurationError(f"{source}: API key entries are `role:secret` or `role:name:secret`")
    role_text, secret = parts[0], parts[-1]
    try:
        role = Role(role_text.strip().lower())
    except ValueError:
        raise ConfigurationError(
            f"{source}: unknown role {role_text!r}; use one of {', '.join(Role)}"
        ) from None
    digest = bytes.fromhex(secret) if _SHA256_HEX.fullmatch(secret) else key_digest(secret)
    name = parts[1] if len(parts) == 3 else f"{role.value}-{digest.hex()[:8]}"
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"{source}: key name {name!r} must match {_NAME.pattern}")
    if len(secret) < 16 and not _SHA256_HEX.fullmatch(secret):
        raise ConfigurationError(f"{source}: key {name!r} is shorter than 16 characters")
    return ApiKey(name=name, role=role, digest=digest)


def _file_entries(path: Path) -> Iterable[tuple[str, str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigurationError(f"cannot read API keys file {path}: {error.strerror}") from error
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            yield entry, f"{path}:{number}"


class KeyRing:
    """The configured API keys; ``authenticate`` maps a presented key to its principal."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        names = [key.name for key in keys]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigurationError(f"API key names must be unique; repeated: {', '.join(duplicates)}")
        self._keys = tuple(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = [
            (secret.get_secret_value(), f"PALLETREID_API_KEYS[{index}]")
            for index, secret in enumerate(settings.api_keys)
        ]
        if settings.api_keys_file is not None:
            entries.extend(_file_entries(settings.api_keys_file))
        return cls([parse_key_entry(entry, source=source) for entry, source in entries])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def roles(self) -> dict[str, Role]:
        return {key.name: key.role for key in self._keys}

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of ``presented``, or ``None``; compares against every key without early exit."""
        digest = key_digest(presented)
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return Principal(name=found.name, role=found.role) if found is not None else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_safe_bind(host: str, key_ring: KeyRing) -> None:
    """Refuse to serve without keys on anything but loopback (the app itself warns that auth is off)."""
    if not key_ring.enabled and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host} without API keys: set PALLETREID_API_KEYS or "
            "PALLETREID_API_KEYS_FILE (see docs/security.md), or bind to 127.0.0.1"
        )


def warn_auth_disabled() -> None:
    logger.warning(
        "AUTHENTICATION IS OFF: no API keys configured (PALLETREID_API_KEYS / PALLETREID_API_KEYS_FILE); "
        "anyone who can reach this loopback port may read and write"
    )
