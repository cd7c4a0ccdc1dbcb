"""Webhook subscription and delivery requests and responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.api.validation import PRINTABLE_TEXT_PATTERN, ShortText
from app.db.tables import DeliveryStatus, EventKind

WebhookUrl = Annotated[
    str,
    Field(max_length=2000, pattern=r"^https?://[^\s/?#]+[^\s]*$", examples=["https://wms.example.com/hooks"]),
]
Secret = Annotated[str, Field(min_length=16, max_length=200, pattern=PRINTABLE_TEXT_PATTERN)]
MAX_SITES = 50


class SubscriptionIn(BaseModel):
    """A new receiver. Without ``secret`` the service generates one (returned once, in the response)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://wms.example.com/hooks", "event_kinds": ["dispatch"], "sites": ["HAM"]}
            ]
        },
    )

    url: WebhookUrl
    secret: Secret | None = None
    event_kinds: list[EventKind] | None = Field(default=None, description="Null: every kind.")
    sites: list[ShortText] | None = Field(default=None, max_length=MAX_SITES, description="Null: every site.")
    active: bool = True
    description: ShortText | None = None


class SubscriptionPatch(BaseModel):
    """Fields to change (absent: unchanged; ``event_kinds`` / ``sites`` null: every kind / site)."""

    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl | None = None
    secret: Secret | None = None
    event_kinds: list[EventKind] | None = None
    sites: list[ShortText] | None = Field(default=None, max_length=MAX_SITES)
    active: bool | None = None
    description: ShortText | None = None


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    url: str
    event_kinds: list[EventKind] | None
    sites: list[str] | None
    active: bool
    description: str | None
    created_at: datetime
    pending: int = Field(description="Deliveries waiting to be sent (the backlog).")
    dead: int = Field(description="Deliveries given up on (see the dead letters).")


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="Signs every delivery (HMAC-SHA256); shown only now.")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    subscription_id: uuid.UUID
    event_id: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    last_status_code: int | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    """A page of deliveries; pass ``next_cursor`` as ``cursor`` for the next page (null: no more)."""

    data: list[DeliveryOut]
    next_cursor: str | None
