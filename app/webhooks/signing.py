"""How deliveries are signed, and how a receiver checks them.

``PalletReid-Signature: sha256=<hex>`` is the HMAC-SHA256, keyed with the subscription's secret, of
``<timestamp>.<body>`` where ``<timestamp>`` is the ``PalletReid-Timestamp`` header (Unix seconds). Signing
the timestamp with the body lets a receiver refuse replays of old deliveries (``verify``'s ``tolerance``).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "PalletReid-Signature"
TIMESTAMP_HEADER = "PalletReid-Timestamp"
EVENT_ID_HEADER = "PalletReid-Event-Id"
DELIVERY_ID_HEADER = "PalletReid-Delivery-Id"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, presented: str, *, now: float, tolerance: float) -> bool:
    """Whether ``presented`` signs ``body`` at ``timestamp`` and the timestamp is within ``tolerance`` s."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), presented)
