"""Webhook delivery: Standard Webhooks signatures, one POST per attempt (workflows/webhooks.py).

The signing secret and the URLs are read from settings here, at delivery time: they never travel
through workflow history. Each attempt signs with the current time (receivers reject timestamps older
than 5 minutes) and the event's stable ID as `webhook-id` (receivers dedupe retries by it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook
from temporalio import activity
from temporalio.exceptions import ApplicationError

from cluster.settings import Settings
from workflows.webhooks import DeliverInput, WebhookTargets

TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
USER_AGENT = "labrador-webhooks/1"


def configured_urls(settings: Settings) -> list[str]:
    return [url.strip() for url in settings.webhook_urls.split(",") if url.strip()]


def signed_request(secret: str | None, event_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt."""
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": event_id,
               "webhook-timestamp": str(int(now.timestamp()))}
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(event_id, now, body)
    return headers


class WebhookActivities:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._session = session

    def all(self) -> list[Callable[..., Any]]:
        return [self.webhook_targets, self.deliver_webhook]

    @activity.defn(name="webhook_targets")
    async def webhook_targets(self) -> WebhookTargets:
        return WebhookTargets(urls=configured_urls(self.settings), max_attempts=self.settings.webhook_max_attempts)

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, request: DeliverInput) -> None:
        event = request.event
        body = json.dumps(event.body(), separators=(",", ":"))
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        headers = signed_request(secret, event.id, body, datetime.now(UTC))
        counter = activity.metric_meter().create_counter(
            "labrador_webhook_deliveries_total", "webhook deliveries by event type and result"
        )
        labels = {"event": event.type.value}
        where = _redacted(request.url)
        try:
            session = self._session or aiohttp.ClientSession(timeout=TIMEOUT)
            try:
                async with session.post(request.url, data=body.encode(), headers=headers, allow_redirects=False,
                                        timeout=TIMEOUT) as answer:
                    status = answer.status
            finally:
                if self._session is None:
                    await session.close()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            counter.add(1, {**labels, "result": "failed"})
            raise ApplicationError(f"webhook {where}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                                   type="DeliveryFailed") from None
        if 200 <= status < 300:
            counter.add(1, {**labels, "result": "delivered"})
            return
        counter.add(1, {**labels, "result": "failed"})
        if status == 410:  # the receiver says it is gone for good: dead-letter now, no more retries
            raise ApplicationError(f"webhook {where}: 410 Gone", type="Gone", non_retryable=True)
        raise ApplicationError(f"webhook {where}: HTTP {status}", type="DeliveryFailed")


def _redacted(url: str) -> str:
    """Scheme, host and path only: a token in a query string stays out of errors and the Web UI."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
