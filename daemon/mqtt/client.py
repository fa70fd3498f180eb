"""What the broker connections share (the link, the shared budget, `check`, the fleet
view): the aiomqtt client for `[mqtt]`, its direct inbox, the JSON encoding and the
topic-level check."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import aiomqtt

from daemon.config import MqttSettings


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII text kept as is."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def check_topic_level(value: str, name: str) -> str:
    """`value` if it is usable as one topic level, else ValueError."""
    if not value or any(c in value for c in "+#/\0"):
        raise ValueError(f"{name} must be a non-empty topic level without + # /: {value!r}")
    return value


def broker_client(
    settings: MqttSettings,
    identifier: str | None,
    *,
    keepalive: int,
    timeout: float,
    **options: Any,
) -> aiomqtt.Client:
    """An aiomqtt client for `[mqtt]`: host, port, credentials and TLS; the daemon's link
    and `check` both connect through it."""
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username or None,
        password=settings.password.get_secret_value() or None,
        identifier=identifier,
        keepalive=keepalive,
        timeout=timeout,
        tls_params=tls_parameters(settings),
        **options,
    )


def tls_parameters(settings: MqttSettings) -> aiomqtt.TLSParameters | None:
    """aiomqtt's TLS settings for `[mqtt]` (None without TLS)."""
    if not settings.tls:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(settings.ca_file) if settings.ca_file else None,
        certfile=str(settings.cert_file) if settings.cert_file else None,
        keyfile=str(settings.key_file) if settings.key_file else None,
    )


def deliver_at_once(
    deliver: Callable[[aiomqtt.Message], None],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An aiomqtt `queue_type` that holds nothing: each message goes to `deliver` the moment
    paho has read it. aiomqtt's own queue would fill (and discard, uncounted) whenever
    paho reads faster than its iterator hands messages out; the receiver's structures
    (the control plane's, the shared budget's) bound and count instead."""

    class Inbox(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            deliver(item)

    return Inbox
