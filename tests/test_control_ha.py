"""Home Assistant discovery against a real Mosquitto, its templates rendered with Jinja2.

Home Assistant itself cannot run here; what it does with the discovery document is done
by the test: read the retained document, render each entity's templates (Jinja2, as Home
Assistant does) against the payloads the daemon publishes, and publish the commands the
entities would send to their command topics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest

from daemon.languages import LANGUAGES, VOICES
from daemon.status import StatusSource
from scripts.broker import Broker, eventually, retained
from tests.control_util import (
    BASE,
    CONFIG,
    HA_DISCOVERY,
    HA_STATUS,
    SET,
    Operator,
    Plane,
    control_plane,
)

pytestmark = pytest.mark.e2e

ENTITIES = {
    "target_lang": "select",
    "source_lang": "select",
    "voice": "select",
    "speech": "switch",
    "mute": "switch",
    "volume": "number",
    "daily_audio_s": "number",
    "state": "sensor",
    "last_caption": "sensor",
    "utterances": "sensor",
    "billed_audio": "sensor",
    "last_latency": "sensor",
}
JINJA = jinja2.Environment(autoescape=False)


def render(template: str, **variables: Any) -> str:
    return JINJA.from_string(template).render(**variables).strip()


def status_of(cp: Plane) -> dict[str, Any]:
    source = StatusSource(cp.counters, cp.room, cp.health, dict, dict)
    return source.snapshot()


async def discovery(broker: Broker) -> dict[str, Any]:
    payload = await retained(broker, HA_DISCOVERY, wait_s=20.0)
    assert payload, "no retained discovery document"
    doc: dict[str, Any] = json.loads(payload)
    return doc


async def command(op: Operator, component: dict[str, Any], value: Any) -> dict[str, Any]:
    """Publish what Home Assistant publishes for `value`; the config/response."""
    if component["platform"] == "switch":
        payload = component["payload_on"] if value else component["payload_off"]
    else:
        payload = render(component["command_template"], value=value)
    seen = len(op.responses())
    await op.publish(component["command_topic"], payload.encode())
    await eventually(lambda: len(op.responses()) > seen)
    reply = op.responses()[seen]
    assert reply["transaction"] == "homeassistant"
    return reply


async def test_discovery_document_describes_the_room(tmp_path: Path) -> None:
    with Broker() as broker:
        async with control_plane(broker, tmp_path / "state") as cp:
            doc = await discovery(broker)
    assert doc["device"]["identifiers"] == ["roomtranslate_room-7"]
    assert doc["device"]["serial_number"] == "d3v1ce"  # the physical device
    assert doc["origin"]["name"] == "roomtranslate"
    assert doc["availability_topic"] == f"{BASE}/availability"
    components = doc["components"]
    assert {key: c["platform"] for key, c in components.items()} == ENTITIES
    assert len({c["unique_id"] for c in components.values()}) == len(ENTITIES)
    for key in ("target_lang", "source_lang", "voice", "speech", "mute", "volume", "daily_audio_s"):
        assert components[key]["command_topic"] == SET, key
        assert components[key]["state_topic"] == CONFIG, key
    assert components["target_lang"]["options"] == sorted(LANGUAGES)
    assert components["source_lang"]["options"] == ["auto", *sorted(LANGUAGES)]
    assert components["voice"]["options"] == list(VOICES)
    assert components["last_caption"]["state_topic"] == f"{BASE}/captions/en"
    for key in ("utterances", "billed_audio", "last_latency"):
        assert components[key]["entity_category"] == "diagnostic"
    assert cp.counters.get("config.responses") == 0


async def test_entity_states_render_from_what_the_daemon_publishes(tmp_path: Path) -> None:
    with Broker() as broker:
        async with control_plane(broker, tmp_path / "state") as cp, Operator(broker) as op:
            await op.set({"volume": 35, "mute": True, "target_lang": "de"})
            config = await op.latest_config(lambda c: c["config"]["target_lang"] == "de")
            components = (await discovery(broker))["components"]
            status = status_of(cp)
    state = {
        key: render(c["value_template"], value_json=config)
        for key, c in components.items()
        if c.get("state_topic") == CONFIG
    }
    assert state == {
        "target_lang": "de",
        "source_lang": "auto",
        "voice": "Cherry",
        "speech": "ON",
        "mute": "ON",
        "volume": "35",
        "daily_audio_s": "0.0",
    }
    assert render(components["state"]["value_template"], value_json=status) == status["state"]
    attributes = render(components["state"]["json_attributes_template"], value_json=status)
    assert json.loads(attributes) == {"problems": {}, "last_error": ""}
    assert render(components["utterances"]["value_template"], value_json=status) == "0"
    status["budget"] = {"used_audio_s": 42.5}  # the daemon adds its budget (daemon/budget.py)
    assert render(components["billed_audio"]["value_template"], value_json=status) == "42.5"
    caption = {"text": "x" * 300 + "end", "latency_ms": 812, "final": True}
    shown = render(components["last_caption"]["value_template"], value_json=caption)
    assert len(shown) == 255 and shown.endswith("end")
    attributes = render(components["last_caption"]["json_attributes_template"], value_json=caption)
    assert json.loads(attributes) == caption
    assert render(components["last_latency"]["value_template"], value_json=caption) == "812"
    assert components["last_caption"]["state_topic"] == f"{BASE}/captions/de"


async def test_commands_from_home_assistant_go_through_config_set(tmp_path: Path) -> None:
    with Broker() as broker:
        async with control_plane(broker, tmp_path / "state") as cp, Operator(broker) as op:
            components = (await discovery(broker))["components"]
            assert (await command(op, components["volume"], 42.0))["config"]["volume"] == 42
            assert (await command(op, components["mute"], True))["config"]["mute"] is True
            reply = await command(op, components["target_lang"], "fr")
            assert reply["status"] == "ok" and cp.room.current.target_lang == "fr"
            reply = await command(op, components["voice"], "Kiki")  # not for fr
            assert reply["status"] == "error" and reply["errors"][0]["field"] == "room.voice"
            assert (await command(op, components["speech"], False))["config"]["speech"] is False
            reply = await command(op, components["daily_audio_s"], 3600)
            assert reply["config"]["daily_audio_s"] == 3600.0
            config = await op.latest_config(lambda c: c["config"]["target_lang"] == "fr")
            assert config["layers"]["mute"] == "room"
            assert json.loads((tmp_path / "state" / "room-config.json").read_text())["room"] == {
                "volume": 42,
                "mute": True,
                "target_lang": "fr",
                "speech": False,
                "daily_audio_s": 3600.0,
            }
            # the caption sensors follow the new target language
            await eventually(
                lambda: f"{BASE}/captions/fr" in op.on(HA_DISCOVERY)[-1].payload.decode()
            )


async def test_discovery_is_published_again_when_home_assistant_comes_online(
    tmp_path: Path,
) -> None:
    with Broker() as broker:
        async with control_plane(broker, tmp_path / "state") as cp, Operator(broker) as op:
            await eventually(lambda: len(op.on(HA_DISCOVERY)) == 1)
            assert op.on(HA_DISCOVERY)[0].retain
            await op.publish(HA_STATUS, b"offline")
            await op.publish(HA_STATUS, b"online")
            await eventually(lambda: len(op.on(HA_DISCOVERY)) == 2)
            assert cp.counters.get("config.ha_online") == 1
            assert cp.counters.get("config.ha_status_other") == 1


async def test_no_discovery_when_turned_off(tmp_path: Path) -> None:
    with Broker() as broker:
        async with control_plane(
            broker, tmp_path / "state", homeassistant={"discovery": False}
        ) as cp:
            await eventually(lambda: cp.link.connected)
            assert await retained(broker, CONFIG, wait_s=20.0) is not None
            assert await retained(broker, HA_DISCOVERY) is None
            assert HA_STATUS not in cp.control.subscriptions
