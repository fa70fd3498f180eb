"""Home Assistant MQTT discovery: one device-based discovery document for the room.

Published retained on `<discovery_prefix>/device/<node>/config` on every connect, again
when Home Assistant announces `online` on `<discovery_prefix>/status`, and when the target
language changes (the caption sensors follow `captions/<target_lang>`). Every command entity
publishes to the room's own `config/set`, so a change from Home Assistant goes through
exactly the path of any other remote change (validation, rate limit, persistence,
`config/response`). States come from the retained `config` and `status` topics;
availability from `availability`.
"""

from __future__ import annotations

import re
from typing import Any

from daemon import __version__
from daemon.languages import LANGUAGES, VOICES

TRANSACTION = "homeassistant"
CAPTION_STATE_CHARS = 255  # Home Assistant's limit for an entity state


def node_id(room_id: str) -> str:
    """The discovery node id: `roomtranslate_<room_id>` in [a-zA-Z0-9_-]."""
    return "roomtranslate_" + re.sub(r"[^a-zA-Z0-9_-]", "_", room_id)


def discovery_topic(ha_prefix: str, room_id: str) -> str:
    return f"{ha_prefix}/device/{node_id(room_id)}/config"


def _command(key: str, value: str) -> str:
    return f'{{"{key}": {value}, "transaction": "{TRANSACTION}"}}'


def discovery_document(
    base: str, room_id: str, target_lang: str, device_id: str = ""
) -> dict[str, Any]:
    """The device discovery payload for the room whose topics are under `base`."""
    node = node_id(room_id)
    set_topic, config_topic = f"{base}/config/set", f"{base}/config"
    status_topic, captions_topic = f"{base}/status", f"{base}/captions/{target_lang}"

    def entity(key: str, platform: str, name: str, **options: Any) -> dict[str, Any]:
        return {"platform": platform, "unique_id": f"{node}_{key}", "name": name, **options}

    def select(key: str, name: str, options: list[str], icon: str) -> dict[str, Any]:
        return entity(
            key,
            "select",
            name,
            icon=icon,
            command_topic=set_topic,
            command_template=_command(key, '"{{ value }}"'),
            state_topic=config_topic,
            value_template=f"{{{{ value_json.config.{key} }}}}",
            options=options,
        )

    def switch(key: str, name: str, icon: str) -> dict[str, Any]:
        return entity(
            key,
            "switch",
            name,
            icon=icon,
            command_topic=set_topic,
            payload_on=_command(key, "true"),
            payload_off=_command(key, "false"),
            state_topic=config_topic,
            value_template=f"{{{{ 'ON' if value_json.config.{key} else 'OFF' }}}}",
            state_on="ON",
            state_off="OFF",
        )

    def number(key: str, name: str, cast: str, icon: str, **more: Any) -> dict[str, Any]:
        return entity(
            key,
            "number",
            name,
            icon=icon,
            command_topic=set_topic,
            command_template=_command(key, f"{{{{ value | {cast} }}}}"),
            state_topic=config_topic,
            value_template=f"{{{{ value_json.config.{key} }}}}",
            **more,
        )

    def diagnostic(key: str, name: str, topic: str, template: str, **more: Any) -> dict[str, Any]:
        return entity(
            key,
            "sensor",
            name,
            entity_category="diagnostic",
            state_topic=topic,
            value_template=template,
            **more,
        )

    languages = sorted(LANGUAGES)
    components = {
        "target_lang": select("target_lang", "Target language", languages, "mdi:translate"),
        "source_lang": select(
            "source_lang", "Source language", ["auto", *languages], "mdi:account-voice"
        ),
        "voice": select("voice", "Voice", list(VOICES), "mdi:account-tie-voice"),
        "speech": switch("speech", "Speech", "mdi:speaker-message"),
        "mute": switch("mute", "Mute", "mdi:volume-off"),
        "volume": number(
            "volume", "Volume", "int", "mdi:volume-high", min=0, max=100, step=1, mode="slider"
        ),
        "daily_audio_s": number(
            "daily_audio_s",
            "Daily budget",
            "float",
            "mdi:cash-clock",
            min=0,
            max=86400,
            step=60,
            mode="box",
            unit_of_measurement="s",
            entity_category="config",
        ),
        "state": entity(
            "state",
            "sensor",
            "State",
            icon="mdi:state-machine",
            state_topic=status_topic,
            value_template="{{ value_json.state }}",
            json_attributes_topic=status_topic,
            json_attributes_template='{{ {"problems": value_json.problems, '
            '"last_error": value_json.last_error} | tojson }}',
        ),
        "last_caption": entity(
            "last_caption",
            "sensor",
            "Last caption",
            icon="mdi:closed-caption",
            state_topic=captions_topic,
            value_template=f"{{{{ value_json.text[-{CAPTION_STATE_CHARS}:] }}}}",
            json_attributes_topic=captions_topic,
            json_attributes_template="{{ value_json | tojson }}",
        ),
        "utterances": diagnostic(
            "utterances",
            "Utterances",
            status_topic,
            "{{ value_json.counters.utterances }}",
            state_class="total_increasing",
        ),
        "billed_audio": diagnostic(
            "billed_audio",
            "Billed audio today",
            status_topic,
            "{{ value_json.budget.used_audio_s }}",
            state_class="total_increasing",
            device_class="duration",
            unit_of_measurement="s",
        ),
        "last_latency": diagnostic(
            "last_latency",
            "Last latency",
            captions_topic,
            "{{ value_json.latency_ms }}",
            state_class="measurement",
            device_class="duration",
            unit_of_measurement="ms",
        ),
    }
    return {
        "device": {
            "identifiers": [node],
            "name": f"roomtranslate {room_id}",
            "manufacturer": "roomtranslate",
            "model": "meeting room translator",
            "sw_version": __version__,
            **({"serial_number": device_id} if device_id else {}),
        },
        "origin": {"name": "roomtranslate", "sw_version": __version__},
        "availability_topic": f"{base}/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "components": components,
    }
