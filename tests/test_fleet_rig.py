"""Two real daemons of one account against one simulator account: what each room says it
was given and sent (its status's `fleet` section, its record in `roomtranslate fleet
--json`) is what the simulator counted for its key, and the two rooms are given the same.

Each room is a real daemon process (scripts/fleet_rooms.py: `daemon.app.Daemon` on a file
source of the shared recordings in real time, its API key its room name) with two extra
caption languages and short clips; the two are on one Mosquitto, or on two Mosquittos
bridged as docs/mqtt.md says. The simulator's account takes `RPM` requests a minute and
the daemons are told the same; the rooms ask for about twice what the account has, so
the shared budget binds. The speech lasts `SPEECH_S`: everything happens within the
rooms' and the simulator's minute, so a room's "last minute" is all it sent.

Tolerances: a room's counts (its status, its record, the view's sum) equal the
simulator's, compared once nothing is in flight; shares agree within `SHARE_TOLERANCE`
(the status and the record are taken at different moments of a share that drifts as the
minute fills); what the simulator counted of a room lies between 0.8 × its share over
the speech and 1.1 × its share over the speech and the longest a request waits for it
(plus the one request a room starts with).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.fleet.pacer import SPEECH_WAIT_S
from daemon.fleet.record import HEARTBEAT_S
from daemon.fleet.share import HEADROOM
from daemon.simulator.account import key_id
from scripts.broker import Broker, Recorder
from scripts.paths import PROJECT_ROOT
from scripts.procs import run_cli, soundless_daemon_env
from scripts.simproc import Simulator

pytestmark = pytest.mark.e2e

RPM = 60
ALL = RPM * HEADROOM  # requests a minute the rooms share
SPEECH_S = 30.0
MAX_UTTERANCE_S = 3.0  # short clips: about 20 a minute, each in three languages
ROOMS = ("room-a", "room-b")
PREFIX = "roomtranslate"
SHARE_TOLERANCE = 0.1
SETTLE_TRIES = 40
SIM_ARGS = (
    "--first-text-ms", "200", "--first-audio-ms", "100", "--chunk-ms", "30",
    "--jitter-ms", "200", "--audio-chunk-ms", "500", "--account-rpm", str(RPM),
)  # fmt: skip

Status = dict[str, Any]


def daemon_argv(room: str, broker: Broker, sim: Simulator, state: Path) -> list[str]:
    return [
        sys.executable, str(PROJECT_ROOT / "scripts" / "fleet_rooms.py"),
        "--room", room, "--prefix", PREFIX, "--account", "acme", "--port", str(broker.port),
        "--sim", sim.base_url, "--state", str(state), "--confirm", "off",
        "--limit", str(RPM), "--seconds", str(SPEECH_S), "--status-s", "1",
        "--max-utterance-s", str(MAX_UTTERANCE_S), "--caption-langs", "de", "fr",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def daemons(
    brokers: tuple[Broker, Broker], sim: Simulator, workdir: Path
) -> AsyncIterator[None]:
    """A real daemon of account `acme` per room on its broker; SIGTERM by PID at the end."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for room, broker in zip(ROOMS, brokers, strict=True):
            (workdir / room).mkdir()
            with (workdir / f"{room}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *daemon_argv(room, broker, sim, workdir / room),
                        cwd=PROJECT_ROOT, stdout=log, stderr=log, start_new_session=True,
                    )
                )  # fmt: skip
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def done(status: Status | None) -> bool:
    """Past the speech, and nothing waiting or in flight for the speech nor any caption
    language."""
    if status is None or status["uptime_s"] < SPEECH_S + 1:
        return False
    queues = [status["queue"], *status["caption_lanes"].values()]
    return all(q["waiting"] == 0 and q["in_flight"] == 0 for q in queues)


def sim_counts(sim: Simulator) -> dict[str, dict[str, int]]:
    """Requests the simulator counted per room (by its key), by answer status."""
    by_key = sim.stats()["account"]["by_key"]
    return {room: by_key.get(key_id(room), {}) for room in ROOMS}


async def settle(
    recorders: dict[str, Recorder], sim: Simulator
) -> tuple[dict[str, dict[str, int]], dict[str, Status]]:
    """The simulator's counts and a status of each room taken while the simulator counted
    nothing more, each saying its room is done."""
    for _ in range(SETTLE_TRIES):
        marks = {room: len(rec.messages) for room, rec in recorders.items()}
        counts = sim_counts(sim)
        await asyncio.sleep(1.5)  # the rooms publish a status every second
        statuses = {
            room: rec.messages[-1].json() for room, rec in recorders.items() if rec.messages
        }
        fresh = all(len(rec.messages) > marks[room] for room, rec in recorders.items())
        ready = fresh and all(done(statuses.get(room)) for room in ROOMS)
        if ready and sim_counts(sim) == counts:
            return counts, statuses
    raise AssertionError(f"the rooms did not settle: {counts}")


def fleet_view(broker: Broker, workdir: Path) -> dict[str, Any]:
    """`roomtranslate fleet --json` on `broker`."""
    env = soundless_daemon_env(
        workdir, MQTT__HOST=broker.host, MQTT__PORT=str(broker.port), MQTT__PREFIX=PREFIX
    )
    result = run_cli("fleet", "--json", "--wait", "1", env=env)
    assert result.returncode == 0, result.stderr
    view: dict[str, Any] = json.loads(result.stdout)
    return view


async def run_rooms(brokers: tuple[Broker, Broker], workdir: Path) -> None:
    """Both rooms until they are done, then what they say against what was counted; the
    fleet view is read on the first broker."""
    with Simulator(*SIM_ARGS) as sim:
        async with contextlib.AsyncExitStack() as stack:
            recorders = {}
            for room, broker in zip(ROOMS, brokers, strict=True):
                rec = Recorder(broker, f"{PREFIX}/{room}/status")
                recorders[room] = await stack.enter_async_context(rec)
            await stack.enter_async_context(daemons(brokers, sim, workdir))
            counts, statuses = await settle(recorders, sim)
            await asyncio.sleep(HEARTBEAT_S + 0.5)  # a record of each room since
            view = fleet_view(brokers[0], workdir)
            check(counts, statuses, view, sim.stats())


def check(
    counts: dict[str, dict[str, int]],
    statuses: dict[str, Status],
    view: dict[str, Any],
    stats: dict[str, Any],
) -> None:
    sent = {room: sum(counts[room].values()) for room in ROOMS}
    what = json.dumps({"simulator": counts, "view": view, "statuses": statuses})
    assert stats["requests"] == sum(sent.values()), what  # every request was one room's
    assert set(stats["by_status"]) == {"200"}, what  # the account never refused one
    assert {r["room_id"]: r["state"] for r in view["rooms"]} == dict.fromkeys(ROOMS, "degraded")
    records = {r["room_id"]: r["record"] for r in view["rooms"]}
    shares = {room: statuses[room]["fleet"]["share"]["requests"] for room in ROOMS}
    for room in ROOMS:
        fleet, record, share = statuses[room]["fleet"], records[room], shares[room]
        assert fleet["account"] == "acme" and fleet["rooms"] == record["share"]["rooms"] == 2
        # what the room says it sent is what the simulator counted of its key
        assert fleet["sent"]["requests"] == record["sent"]["requests"] == sent[room], what
        assert sum(statuses[room]["service"]["requests"].values()) == sent[room], what
        # the account binds: extra languages were shed
        assert fleet["shed"]["extra"] > 0 and record["shed"]["extra"] > 0, what
        assert record["share"]["requests"] == pytest.approx(share, rel=SHARE_TOLERANCE), what
        # the room took its share, and no more
        low = (1 - 2 * SHARE_TOLERANCE) * share * SPEECH_S / 60
        high = 1 + (1 + SHARE_TOLERANCE) * share * (SPEECH_S + SPEECH_WAIT_S) / 60
        assert low <= sent[room] <= high, what
    # the two rooms split the account and are given the same
    assert sum(shares.values()) == pytest.approx(ALL, rel=SHARE_TOLERANCE), what
    assert 0.8 <= shares[ROOMS[0]] / shares[ROOMS[1]] <= 1.2, what
    assert 0.8 <= sent[ROOMS[0]] / sent[ROOMS[1]] <= 1.2, what
    account = view["accounts"]["acme"]
    assert account["rooms"] == 2 and account["limit"] == RPM and account["rejected"] == 0
    assert account["sent"] == sum(sent.values()), what
    print(f"fleet rig: the simulator counted {sent}; shares {shares} a minute")


async def test_two_daemons_on_one_broker_split_one_account_as_the_service_counts(
    tmp_path: Path,
) -> None:
    with Broker() as broker:
        await run_rooms((broker, broker), tmp_path)


async def test_two_daemons_on_two_bridged_brokers_split_one_account_as_the_service_counts(
    tmp_path: Path,
) -> None:
    with Broker() as central:
        bridge = [  # docs/mqtt.md, "Beyond one broker", without TLS
            "connection central",
            f"address {central.host}:{central.port}",
            "cleansession true",
            "restart_timeout 1",
            f"topic {PREFIX}/_account/# both 1",
            f"topic {PREFIX}/+/status out 1",
            f"topic {PREFIX}/+/availability out 1",
        ]
        with Broker(listener_options=bridge) as site:
            await run_rooms((central, site), tmp_path)
