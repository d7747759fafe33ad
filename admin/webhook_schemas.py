"""The webhook shapes of the admin API's OpenAPI document: endpoints and deliveries.

Built from the webhooks module's own event names and URL bound, and the validation
module's grace bound, like the other shapes in `schemas`.
"""

from __future__ import annotations

from typing import Any

from gateway.webhooks import EVENTS, URL_MAX

from .schemas import CURSOR, TIME, UUID, grace, nullable, obj, ref

URL_IN = {
    "type": "string",
    "format": "uri",
    "pattern": "^https?://",
    "maxLength": URL_MAX,
    "description": "http(s) URL, no credentials. Unless webhooks.allow_private_targets, it "
    "must resolve to public addresses only (400 otherwise).",
}
EVENTS_IN = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"type": "string", "enum": list(EVENTS)},
}


def webhook_schemas() -> dict[str, Any]:
    webhook = {
        "id": UUID,
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string", "enum": list(EVENTS)}},
        "enabled": {"type": "boolean"},
        "created_at": TIME,
        "created_by": nullable(UUID),
        "secret_created_at": TIME,
    }
    return {
        "Webhook": obj(webhook),
        "WebhookWithSecret": obj(
            {
                **webhook,
                "secret": {
                    "type": "string",
                    "description": "The signing secret (whsec_…): in this response only.",
                },
            }
        ),
        "WebhookList": obj(
            {"items": {"type": "array", "items": ref("Webhook")}, "next_cursor": CURSOR}
        ),
        "WebhookCreate": obj(
            {"url": URL_IN, "events": EVENTS_IN, "enabled": {"type": "boolean"}},
            required=["url", "events"],
        ),
        "WebhookUpdate": obj(
            {"url": URL_IN, "events": EVENTS_IN, "enabled": {"type": "boolean"}},
            required=[],
            minProperties=1,
        ),
        "WebhookRotate": obj(
            {"grace_seconds": grace("Sign with the old secret too for this long (default 0).")},
            required=[],
        ),
        "Delivery": obj(
            {
                "id": {"type": "string"},
                "webhook_id": {
                    "type": "string",
                    "description": "The message id (webhook-id header): the same on every "
                    "attempt and resend, for receivers to drop duplicates.",
                },
                "event_type": {"type": "string", "enum": list(EVENTS)},
                "status": {"type": "string", "enum": ["pending", "succeeded", "failed"]},
                "attempts": {"type": "integer", "minimum": 0},
                "response_status": {"type": ["integer", "null"]},
                "response_body": {
                    "type": ["string", "null"],
                    "description": "The first 1 KiB of the last answer.",
                },
                "last_error": {"type": ["string", "null"]},
                "latency_ms": {"type": ["number", "null"]},
                "created_at": TIME,
                "last_attempt_at": nullable(TIME),
                "next_attempt_at": {
                    **nullable(TIME),
                    "description": "When a pending delivery is tried next.",
                },
                "delivered_at": nullable(TIME),
            }
        ),
        "DeliveryList": obj(
            {"items": {"type": "array", "items": ref("Delivery")}, "next_cursor": CURSOR}
        ),
    }
