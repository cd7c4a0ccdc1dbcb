"""Value checks shared by request parameters: what PostgreSQL can store and Python can read back.

PostgreSQL text cannot hold NUL bytes, and a timestamp far in the past can be stored but not read back into
a Python ``datetime`` (year 0 after conversion to UTC); both would surface as 500s, so they are 422s here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

from app.epcis.gs1 import validate_grai, validate_sscc

PRINTABLE_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
"""No control characters (NUL, newlines, escapes): keeps values storable and log lines honest."""

EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(9000, 1, 1, tzinfo=UTC)


def _within_timestamp_range(value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST_TIMESTAMP <= aware <= LATEST_TIMESTAMP:
        raise ValueError(
            f"must lie between {EARLIEST_TIMESTAMP.isoformat()} and {LATEST_TIMESTAMP.isoformat()}"
        )
    return value


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _not_a_number(value: object) -> object:
    """Refuse numbers: pydantic would read them (also as text) as Unix seconds, which the documented
    ``format: date-time`` does not allow, so a client's mistake would pass silently."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        raise ValueError("expected an ISO 8601 date-time such as 2026-12-04T09:41:00Z, not a number")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_within_timestamp_range)]
"""An ISO 8601 date-time within a range PostgreSQL and Python both handle (naive values are UTC)."""

ShortText = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE_TEXT_PATTERN)]
"""A label such as a site, gate or delivery reference."""


def _empty_as_none(value: object) -> object:
    return None if value == "" else value


Cursor = Annotated[str | None, BeforeValidator(_empty_as_none)]
"""An opaque pagination cursor; an empty value (``cursor=``) means none, like leaving it out."""

Sscc = Annotated[
    str,
    Field(min_length=18, max_length=18, pattern=r"^[0-9]{18}$", examples=["376123450000012347"]),
    AfterValidator(validate_sscc),
]
"""A GS1 SSCC (serial shipping container code): 18 digits, the last one its check digit (verified)."""

Grai = Annotated[
    str,
    Field(min_length=15, max_length=30, examples=["04012345000016ABC123"]),
    AfterValidator(validate_grai),
]
"""An individual GS1 GRAI: "0", 12 digits, the check digit (verified), then a serial of 1..16 characters."""

DamageCode = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
"""A damage code of the site's catalogue (e.g. ``broken_board``, ``EPAL-7``)."""

MAX_DAMAGE_CODES = 10
