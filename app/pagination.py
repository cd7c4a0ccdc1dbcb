"""Opaque keyset cursors: the sort key of the last row of a page, as URL-safe base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json

from app.errors import InvalidCursorError

CursorKey = list[str | int]

MAX_CURSOR_LENGTH = 512
_MAX_ROW_ID = 2**63 - 1


def encode_cursor(key: CursorKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, length: int) -> CursorKey:
    """Decode a cursor made by ``encode_cursor`` whose key has ``length`` parts."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursorError("cursor is not one this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise InvalidCursorError("cursor is not one this API returned") from error
    if (
        not isinstance(key, list)
        or len(key) != length
        or not all((isinstance(v, str) and "\x00" not in v) or type(v) is int for v in key)
    ):
        raise InvalidCursorError("cursor is not one this API returned")
    return key


def decode_id_cursor(cursor: str | None) -> int | None:
    """The row id of a cursor over an id-ordered listing (``None`` for the first page)."""
    if cursor is None:
        return None
    (row_id,) = decode_cursor(cursor, length=1)
    if not isinstance(row_id, int) or not 0 <= row_id <= _MAX_ROW_ID:
        raise InvalidCursorError("cursor is not one this API returned")
    return row_id
