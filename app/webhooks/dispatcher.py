"""Sends the outbox: signed POSTs, retries with exponential backoff and jitter, dead letters.

Per subscription, deliveries go out one at a time in event order (the head must succeed or die before the
next is tried), so a receiver sees each pallet's events in order. A delivery that fails is retried after
``base * 2^(attempt-1)`` seconds (capped), scaled by a random factor in [0.5, 1) so that receivers that come
back are not hit by every sender at once; after ``max_attempts`` it becomes a dead letter and the next one
goes. A crash after the receiver answered but before the outcome is stored sends the delivery again: the
``PalletReid-Event-Id`` header lets the receiver drop the duplicate. One process sends at a time (a
session-level advisory lock); the others skip their round.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine

from app.db.session import build_session_factory, unit_of_work
from app.db.tables import DeliveryStatus
from app.events.schemas import EventOut
from app.settings import Settings
from app.webhooks.repository import WebhookRepository, release_dispatch_lock, try_dispatch_lock
from app.webhooks.signing import (
    DELIVERY_ID_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

logger = logging.getLogger(__name__)


class Sender(Protocol):
    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        """POST ``body``; the response status (raises ``OSError`` when no response came)."""
        ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST with the standard library; redirects are not followed (a 3xx counts as a failure)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _opener.open(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 10
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    timeout_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            max_attempts=settings.webhook_max_attempts,
            backoff_seconds=settings.webhook_backoff_seconds,
            backoff_max_seconds=settings.webhook_backoff_max_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
        )

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones (exponential, capped, jittered)."""
        ceiling = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempts - 1))
        return ceiling * (0.5 + 0.5 * rng.random())


@dataclass(frozen=True)
class _Outgoing:
    delivery_id: int
    attempts: int
    url: str
    body: bytes
    secret: str
    event_id: int


class WebhookDispatcher:
    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy,
        *,
        sender: Sender = http_post,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = build_session_factory(engine)
        self._policy = policy
        self._send = sender
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()

    def run_once(self) -> int:
        """Attempt every subscription's next due delivery once; how many were attempted."""
        with self._engine.connect() as lock:
            if not try_dispatch_lock(lock):
                lock.rollback()
                return 0
            try:
                outgoing = self._due()
                for item in outgoing:
                    self._attempt(item)
                return len(outgoing)
            finally:
                release_dispatch_lock(lock)
                lock.commit()

    def _due(self) -> list[_Outgoing]:
        now = self._clock()
        due = []
        with unit_of_work(self._sessions) as session:
            webhooks = WebhookRepository(session)
            for head in webhooks.heads():
                if head.next_attempt_at > now:
                    continue
                subscription = webhooks.subscription(head.subscription_id)
                event = webhooks.event(head.event_id)
                assert subscription is not None and event is not None, "foreign keys"
                payload = {
                    "delivery_id": head.id,
                    "subscription_id": str(head.subscription_id),
                    "event": EventOut.model_validate(event).model_dump(mode="json"),
                }
                body = json.dumps(payload, separators=(",", ":")).encode()
                due.append(
                    _Outgoing(head.id, head.attempts, subscription.url, body, subscription.secret, event.id)
                )
        return due

    def _attempt(self, item: _Outgoing) -> None:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "palletreid-webhooks/1",
            EVENT_ID_HEADER: str(item.event_id),
            DELIVERY_ID_HEADER: str(item.delivery_id),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(item.secret, timestamp, item.body),
        }
        status_code: int | None = None
        error: str | None = None
        try:
            status_code = self._send(item.url, item.body, headers, self._policy.timeout_seconds)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except (OSError, ValueError) as failure:  # refused, reset, timed out, unresolvable, bad URL
            error = f"{type(failure).__name__}: {failure}"
        attempts = item.attempts + 1
        now = self._clock()
        if error is None:
            status, next_attempt = DeliveryStatus.DELIVERED, now
        elif attempts >= self._policy.max_attempts:
            status, next_attempt = DeliveryStatus.DEAD, now
            logger.warning(
                "webhook delivery %d to %s is dead after %d attempts: %s",
                item.delivery_id,
                item.url,
                attempts,
                error,
            )
        else:
            status = DeliveryStatus.PENDING
            next_attempt = now + timedelta(seconds=self._policy.delay(attempts, self._rng))
        with unit_of_work(self._sessions) as session:
            WebhookRepository(session).record_attempt(
                item.delivery_id,
                status=status,
                attempts=attempts,
                next_attempt_at=next_attempt,
                error=error,
                status_code=status_code,
                delivered_at=now if status is DeliveryStatus.DELIVERED else None,
            )


class WebhookWorker:
    """Runs the dispatcher on a daemon thread until stopped: again at once after work, else after a pause."""

    def __init__(self, dispatcher: WebhookDispatcher, *, poll_seconds: float) -> None:
        self._dispatcher = dispatcher
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-worker", daemon=True)
        self._last_warning = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                attempted = self._dispatcher.run_once()
            except Exception as error:  # the database is away or not migrated yet: try again later
                attempted = 0
                if time.monotonic() - self._last_warning > 60:
                    self._last_warning = time.monotonic()
                    logger.warning("webhook worker: %s (retrying)", error)
            if attempted == 0:
                self._stop.wait(self._poll_seconds)


def start_worker(settings: Settings, engine: Engine) -> WebhookWorker | None:
    """The delivery worker of this process (``None`` when ``PALLETREID_WEBHOOK_WORKER`` is off)."""
    if not settings.webhook_worker:
        return None
    dispatcher = WebhookDispatcher(engine, DeliveryPolicy.from_settings(settings))
    worker = WebhookWorker(dispatcher, poll_seconds=settings.webhook_poll_seconds)
    worker.start()
    return worker
