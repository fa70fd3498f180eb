"""`captions/<lang>/recent`: the last finals, retained on a real Mosquitto, cleared after quiet."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from daemon.captions.recent import RecentCaptions
from daemon.config import MqttSettings
from daemon.counters import Counters
from daemon.mqtt import MqttLink
from scripts.broker import Broker, eventually, retained

pytestmark = pytest.mark.e2e

BASE = "rt/room-9"


def final(uid: int, text: str | None = None) -> dict[str, Any]:
    return {"utterance_id": uid, "final": True, "text": f"line {uid}" if text is None else text}


async def document(broker: Broker, lang: str) -> dict[str, Any] | None:
    payload = await retained(broker, f"{BASE}/captions/{lang}/recent")
    return json.loads(payload) if payload else None


async def test_recent_keeps_the_last_finals_and_clears_after_quiet() -> None:
    with Broker() as broker:
        settings = MqttSettings(
            host=broker.host, port=broker.port, prefix="rt", room_id="room-9", reconnect_min_s=0.05
        )
        link = MqttLink(settings, Counters())
        recent = RecentCaptions(
            lambda lang, doc: link.publish_retained(("captions", lang, "recent"), doc),
            keep=3,
            clear_after_s=1.5,
        )
        link_task = asyncio.create_task(link.run())
        clear_task = asyncio.create_task(recent.run())
        try:
            await eventually(lambda: link.connected)
            for uid in range(1, 6):
                recent.add("de", final(uid))
            recent.add("de", final(6, text=""))  # an empty final (dropped) is not kept
            recent.add("fr", final(1, "<b>un</b>"))
            await asyncio.sleep(0.3)
            de = await document(broker, "de")
            assert de is not None and de["target_lang"] == "de"
            assert [c["utterance_id"] for c in de["captions"]] == [3, 4, 5]
            fr = await document(broker, "fr")
            assert fr is not None and fr["captions"][0]["text"] == "<b>un</b>"
            await asyncio.sleep(0.9)
            recent.add("fr", final(2))  # activity postpones the clearing
            await asyncio.sleep(0.9)
            assert await document(broker, "de") is not None
            await asyncio.sleep(1.2)
            assert await document(broker, "de") is None
            assert await document(broker, "fr") is None
            assert recent.documents() == {}
            recent.add("de", final(7))  # a new conversation starts a new document
            await asyncio.sleep(0.3)
            again = await document(broker, "de")
            assert again is not None and [c["utterance_id"] for c in again["captions"]] == [7]
            assert recent.clear() == 1  # the clean stop
            await asyncio.sleep(0.3)
            assert await document(broker, "de") is None
        finally:
            clear_task.cancel()
            await link.close(timeout=1.0)
            await asyncio.wait_for(link_task, 2.0)


async def test_only_the_latest_document_per_topic_is_sent_after_an_outage() -> None:
    with Broker(start=False) as broker:
        settings = MqttSettings(
            host=broker.host,
            port=broker.port,
            prefix="rt",
            room_id="room-9",
            reconnect_min_s=0.05,
            reconnect_max_s=0.1,
        )
        counters = Counters()
        link = MqttLink(settings, counters)
        task = asyncio.create_task(link.run())
        try:
            for uid in range(1, 4):
                link.publish_retained(("captions", "de", "recent"), {"captions": [final(uid)]})
            broker.start()
            await eventually(lambda: link.connected, 5.0)
            await asyncio.sleep(0.3)
            doc = await document(broker, "de")
            assert doc == {"captions": [final(3)]}
            assert counters.get("mqtt_captions_published") == 0  # documents are not captions
        finally:
            await link.close(timeout=1.0)
            await asyncio.wait_for(task, 2.0)
