"""Property: whatever arrives on config/set and the group topics, every message is answered
or counted, the applied settings are always valid, and the control plane keeps running.

One broker and one control plane (with the daemon's MqttLink) serve all the examples; they
run on an event loop in a thread, the examples publish through a real MQTT client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import RoomSettings
from daemon.control.layers import settable_keys
from daemon.control.state import StateFile
from daemon.languages import LANGUAGES, VOICES
from scripts.broker import Broker, eventually
from tests.control_util import FLEET, SET, SITE_TOPIC, Operator, Plane, control_plane

pytestmark = pytest.mark.e2e

TOPICS = [SET, SET, FLEET, SITE_TOPIC]
GROUP_COUNTERS = [
    f"config.{layer}_{what}" for layer in ("fleet", "site") for what in ("applied", "unchanged")
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(sorted(LANGUAGES) + list(VOICES) + ["auto", ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
plausible = st.fixed_dictionaries(  # mostly right: exercises the cross-field checks
    {},
    optional={
        "target_lang": st.sampled_from(sorted(LANGUAGES)),
        "source_lang": st.sampled_from(["auto", *sorted(LANGUAGES)]),
        "voice": st.sampled_from(list(VOICES)),
        "speech": st.booleans(),
        "volume": st.integers(min_value=-5, max_value=105),
        "mute": st.booleans(),
        "vad_mode": st.integers(min_value=0, max_value=4),
        "transaction": st.one_of(st.text(max_size=10), st.integers()),
    },
)
keys = st.one_of(st.sampled_from([*settable_keys(), "transaction", "api", "password"]), st.text())
objects = st.dictionaries(keys, json_values, max_size=6)
payloads = st.one_of(
    st.binary(max_size=200),
    objects.map(lambda d: json.dumps(d).encode()),
    plausible.map(lambda d: json.dumps(d).encode()),
    plausible.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)
messages = st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=6)


class Background:
    """An event loop in a thread, holding the broker's control plane and an operator."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        self.loop.close()


@dataclass
class World:
    background: Background
    plane: Plane
    operator: Operator


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    background = Background()
    with Broker() as broker:
        plane_cm = control_plane(broker, state)
        operator = Operator(broker)
        plane = background.call(plane_cm.__aenter__())
        background.call(operator.__aenter__())
        try:
            yield World(background, plane, operator)
        finally:
            for topic in (FLEET, SITE_TOPIC):
                background.call(operator.publish(topic, b"", retain=True))
            background.call(operator.__aexit__(None, None, None))
            background.call(plane_cm.__aexit__(None, None, None))
            background.close()


def accounted(plane: Plane, operator: Operator) -> int:
    """Messages answered (config/response) or counted without an answer."""
    counted = sum(plane.counters.get(name) for name in GROUP_COUNTERS)
    counted += plane.counters.get("config.dropped_queue_full")
    counted += plane.counters.get("config.superseded")  # a newer document came first
    return len(operator.responses()) + round(counted)


async def exchange(world: World, batch: list[tuple[str, bytes]]) -> None:
    plane, operator = world.plane, world.operator
    before = accounted(plane, operator)
    version = plane.control.version
    for topic, payload in batch:
        await operator.publish(topic, payload, retain=topic != SET)
    await eventually(lambda: accounted(plane, operator) >= before + len(batch), 20.0)
    assert accounted(plane, operator) == before + len(batch)

    current = plane.room.current
    assert RoomSettings.model_validate(current.model_dump()) == current
    assert plane.control.stack.validate() == current
    assert plane.control.version >= version
    assert plane.link.connected
    assert plane.counters.get("config.handler_errors") == 0
    assert plane.counters.get("mqtt_handler_errors") == 0
    await eventually(
        lambda: (
            bool(operator.configs()) and operator.configs()[-1]["version"] == plane.control.version
        )
    )
    assert operator.configs()[-1]["config"] == current.model_dump(mode="json")
    saved = StateFile(plane.state_dir).load()
    assert not saved.problem
    if saved.state.version:
        assert saved.state.room == plane.control.stack.room


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=messages)
def test_anything_on_the_control_topics_is_answered_or_counted(
    world: World, batch: list[tuple[str, bytes]]
) -> None:
    world.background.call(exchange(world, batch))


def test_the_fuzzed_plane_still_takes_a_good_change(world: World) -> None:
    async def good() -> dict[str, Any]:
        await world.operator.publish(FLEET, b"", retain=True)
        await world.operator.publish(SITE_TOPIC, b"", retain=True)
        for key in settable_keys():
            await world.operator.set({key: None})
        return await world.operator.set({"target_lang": "ja", "voice": "Ethan", "volume": 12})

    reply = world.background.call(good())
    assert reply["status"] == "ok", reply
    assert world.plane.room.current.target_lang == "ja"
    assert Path(world.plane.state_dir).is_dir()
