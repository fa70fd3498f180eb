"""`roomtranslate run`: the room daemon, one supervised asyncio task per stage.

    mic ─▶ Capture (ring) ─▶ echo stage ─▶ Segmenter ─▶ Sequencer (≤ N in flight)
        ─▶ ordered events ─▶ Playback (speaker) + Captions (MQTT) ; Status ─▶ MQTT

Each I/O stage (capture device, playback device, MQTT) owns its reopen/reconnect loop,
so a lost broker never stops the audio and a lost device never stops MQTT. SIGTERM /
SIGINT stop gracefully: the microphone closes, waiting clips are dropped (counted), the
utterance that is playing finishes (up to `audio.stop_cap_s`), finals are flushed,
`offline` is published, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import aclosing
from typing import Any, Protocol

from daemon.budget import Budget, BudgetState
from daemon.captions import Captions
from daemon.captions.events import usage_figures
from daemon.captions.lanes import CaptionLane, CaptionLanes
from daemon.captions.recent import RecentCaptions
from daemon.capture import Capture
from daemon.config import ConfigError, LiveRoom, Settings
from daemon.control import ControlPlane
from daemon.counters import Counters
from daemon.devices import DeviceHost, DeviceInfo, list_devices
from daemon.echo import PlayedAudio, confirmer_for, make_echo_stage
from daemon.fleet.account import SharedBudget
from daemon.handoff import Handoff
from daemon.heap import TRIM_EVERY_S, HeapTrimmer, fix_mmap_threshold
from daemon.identity import device_id
from daemon.mqtt import MqttLink
from daemon.notify import Notifier
from daemon.playback import Playback, PlaybackEvent, PlaybackFinished, PlaybackState
from daemon.profiles import Profile, load_profiles, profiles_dir, select_profile
from daemon.ratelimit import ServiceLoad
from daemon.segmenter import Segmenter
from daemon.sequencer import Sequencer
from daemon.status import Health, StatusPublisher, StatusSource
from daemon.translator import FATAL_KINDS, Translator, probe_utterance
from daemon.values import (
    SAMPLE_RATE,
    AudioChunk,
    Frame,
    Outcome,
    Retrying,
    TextDelta,
    Timeline,
    TranslationEvent,
    Utterance,
)

log = logging.getLogger(__name__)
NO_AUDIO_S = 3.0  # no microphone frame for this long: degraded
SUPERVISE_S = 0.25


def choose_profile(
    settings: Settings, devices: list[DeviceInfo], *, warn: bool = True
) -> Profile | None:
    """The hardware profile; with "auto" and nothing matching, the system defaults."""
    profiles = load_profiles(profiles_dir(settings.audio))
    try:
        return select_profile(settings.audio.profile, devices, profiles)
    except ConfigError:
        if settings.audio.profile != "auto":
            raise
        if warn:
            log.warning("no hardware profile matches the devices present: using the defaults")
        return None


def output_spec(
    settings: Settings, profile: Profile | None, devices: list[DeviceInfo]
) -> str | int | None:
    """The output device: the configured one, else the profile's, else the default."""
    if settings.audio.output_device:
        spec = settings.audio.output_device
        return int(spec) if spec.isdigit() else spec
    if profile is not None:
        found = profile.output_device(devices)
        if found is not None:
            return found.name
    return None


class FrameSource(Protocol):
    """What the listener reads: the microphone (`Capture`), or a file (scripts/soak.py)."""

    @property
    def device_name(self) -> str: ...

    def frames(self) -> AsyncIterator[Frame]: ...

    def wall_time(self, sample: int) -> float: ...

    def monotonic_time(self, sample: int) -> float: ...


class Daemon:
    """The running room: stages, their tasks and the graceful stop."""

    def __init__(
        self,
        settings: Settings,
        api_key: str,
        profile: Profile | None,
        output: str | int | None,
        *,
        source: FrameSource | None = None,
        trim_every_s: float = TRIM_EVERY_S,
    ) -> None:
        self.settings = settings
        self.counters = Counters()
        self.room = LiveRoom(settings.room)
        self.health = Health()
        # Room changes saved from earlier runs apply now, before the broker is reached.
        self.control = ControlPlane(settings, self.room, self.counters, self.health.problem)
        self.profile = profile
        # One PortAudio device list for capture and playback, renewed while one is missing.
        self.devices = DeviceHost(self.counters)
        self.devices.subscribe(self._replan)
        self.capture = self._make_capture()
        self.source: FrameSource = source if source is not None else self.capture
        played = PlayedAudio(self.counters)  # playback → echo stage: what the DAC plays
        self.playback = self._make_playback(output, played)
        self.echo = make_echo_stage(
            settings.audio, profile, self.playback.audible_until, self.counters, played
        )
        self.load = ServiceLoad(self.counters, settings.api.requests_per_minute)
        self.translator = Translator(settings.api, api_key, self.counters, load=self.load)
        # The cap is read per clip from the settings the daemon holds now.
        self.budget = Budget(
            lambda: self.room.current.daily_audio_s, settings.state_dir, self.counters
        )
        self._translate = self.budget.gate(self.translator.translate)
        self.sequencer = Sequencer(settings.pipeline, self._translate, self.room, self.counters)
        self.device_id = settings.mqtt.device_id or device_id(settings.state_dir)
        self.mqtt = self._make_mqtt()
        self.shared = self._make_shared_budget()
        self._caption_seq = itertools.count(1)  # one seq for every caption language
        self.recent = RecentCaptions(
            self._publish_recent, settings.captions.recent, settings.captions.recent_clear_s
        )
        self.captions = self._captions_for(None)
        self.lanes = CaptionLanes(self._make_lane, self.room)
        self.handoff = Handoff(self.echo, self.sequencer, self.lanes, self.counters)
        self.status = self._make_status()
        self.notifier = Notifier(self.counters)
        self.heap = HeapTrimmer(trim_every_s)  # free memory back to the system (heap.py)
        self._stop = asyncio.Event()
        self._started_at = time.monotonic()
        self._last_frame = 0.0
        self._service_problem: str | None = None  # the start check could not reach it
        self._unhealthy = ""  # why the watchdog is not fed

    # -- the stages' factories -----------------------------------------------------------------

    def _make_capture(self) -> Capture:
        return Capture(
            self.settings.audio,
            self.counters,
            profile=self.profile,
            frame_samples=SAMPLE_RATE * self.settings.segmenter.frame_ms // 1000,
            host=self.devices,
            may_yield=lambda: not self.health.hearing,  # never inside speech
        )

    def _make_playback(self, output: str | int | None, played: PlayedAudio) -> Playback:
        playback = Playback(
            output,
            self.counters,
            max_backlog_s=self.settings.audio.max_playback_backlog_s,
            max_rate=self.settings.audio.max_playback_rate,
            more_coming=lambda: self.health.hearing or self.sequencer.unreleased > 1,
            on_event=self._on_playback,
            fmt=self.profile.output if self.profile is not None else None,
            played=played,
            host=self.devices,
        )
        playback.follow(self.room)
        return playback

    def _make_mqtt(self) -> MqttLink | None:
        mqtt = self.settings.mqtt
        if not mqtt.enabled:
            return None
        link = MqttLink(
            mqtt,
            self.counters,
            client_id=mqtt.client_id or f"roomtranslate-{mqtt.room_id}-{self.device_id}",
            device_id=self.device_id,
            subscriptions=self.control.subscriptions,
            on_message=self.control.receive,
        )
        self.control.attach(link, device_id=self.device_id)
        return link

    def _make_shared_budget(self) -> SharedBudget | None:
        """The account shared with the other rooms of it (needs the broker)."""
        if not self.settings.mqtt.enabled:
            return None
        s, room = self.settings, self.room
        return SharedBudget(
            s.mqtt,
            s.api,
            self.load,
            lambda: room.current.account,
            self.counters,
            device_id=self.device_id,
        )

    def _make_status(self) -> StatusSource:
        return StatusSource(
            self.counters,
            self.room,
            self.health,
            self._devices,
            self._queue,
            refresh=lambda: self._check_health(time.monotonic()),
            extra=self._more_status,
        )

    # -- wiring helpers --------------------------------------------------------------------

    def _devices(self) -> Mapping[str, str]:
        return {
            "input": self.source.device_name,
            "output": self.playback.device_name,
            "profile": self.profile.name if self.profile is not None else "",
        }

    def _queue(self) -> Mapping[str, int]:
        return {
            "waiting": self.sequencer.waiting,
            "screening": self.handoff.backlog,
            "in_flight": self.sequencer.in_flight,
            "playback_backlog_ms": round(self.playback.backlog_s() * 1000),
        }

    def _publish_caption(self, target: str, event: Mapping[str, Any], final: bool) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_caption(target, event, final)

    def _captions_for(self, lang: str | None) -> Captions:
        return Captions(
            self._publish_caption,
            lambda: self.room.current,
            lang=lang,
            seq=self._caption_seq,
            counters=self.counters,
            on_final=self.recent.add,
        )

    def _make_lane(self, lang: str) -> CaptionLane:
        return CaptionLane(
            lang,
            translate=self._translate,  # caption languages are billed: behind the budget
            pipeline=self.settings.pipeline,
            room=self.room,
            captions=self._captions_for(lang),
        )

    def _publish_recent(self, lang: str, document: Mapping[str, Any] | None) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_retained(("captions", lang, "recent"), document)

    def _replan(self, devices: list[DeviceInfo]) -> None:
        """A fresh device list (a rescan): the profile and the output chosen again, as at
        start, for the stages' next open. The echo guard stays as chosen at start."""
        try:
            profile = choose_profile(self.settings, devices, warn=False)
        except ConfigError as exc:
            log.error("after the device rescan: %s", "; ".join(exc.lines))
            return
        output = output_spec(self.settings, profile, devices)
        if profile != self.profile:
            log.info("hardware profile now %s", profile.name if profile else "(defaults)")
        self.profile = profile
        self.capture.use_profile(profile)
        self.playback.use_device(output, profile.output if profile is not None else None)

    def _more_status(self) -> Mapping[str, Any]:
        return {
            "echo": {**self.echo.describe(), "ducking": self.playback.ducked},
            "playback": {"rate": round(self.playback.pace_rate, 2)},
            "service": {
                "requests_per_minute": self.load.per_minute(),
                "throttled": self.load.throttling,
                "requests": {
                    k: round(v) for k, v in self.counters.group("requests_by_lang").items()
                },
            },
            "caption_lanes": self.lanes.figures(),
            "usage": usage_figures(self.counters),
            "room_id": self.settings.mqtt.room_id,
            "device_id": self.device_id,
            "budget": self.budget.snapshot(),
            "fleet": self.shared.figures() if self.shared is not None else {"account": ""},
        }

    def _publish_status(self, status: Mapping[str, Any]) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_status(status)

    def stop(self) -> None:
        self._stop.set()

    # -- the stages ------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Microphone → echo stage → segmenter → hand-off (screening, sequencer, lanes)."""
        segmenter = Segmenter(
            self.settings.segmenter,
            self.room,
            self.counters,
            self.source.wall_time,
            confirmer=confirmer_for(self.echo),
            may_cut=lambda: not self.load.shed_reason(),  # short of requests: merge
        )
        async for captured in self.source.frames():
            self._last_frame = time.monotonic()
            frame = self.echo.process(captured, self.source.monotonic_time(captured.start))
            for event in segmenter.push(frame):
                if isinstance(event, Utterance):
                    self.handoff.offer(event)
            if segmenter.speaking != self.health.hearing:
                self.health.hearing = segmenter.speaking
                # Barge-in: people talk while our translation plays; it steps back.
                self.playback.duck(self.settings.audio.duck_db if segmenter.speaking else 0.0)

    async def _deliver(self) -> None:
        """Ordered translation events → speaker and captions."""
        async for utt, event in self.sequencer.results():
            self._deliver_one(utt, event)

    def _deliver_one(self, utt: Utterance, event: TranslationEvent) -> None:
        if isinstance(event, TextDelta):
            self.captions.partial(utt, event.text)
        elif isinstance(event, AudioChunk):
            if not self.playback.is_open(utt.id):
                self.playback.start_utterance(utt.id, utt.timeline)
            self.playback.feed(utt.id, event.pcm)
        elif isinstance(event, Retrying):
            self.health.error(f"service: {event.kind}, retrying in {event.delay_s:.1f} s")
        elif isinstance(event, Outcome):
            self._finish(utt, event)

    def _finish(self, utt: Utterance, outcome: Outcome) -> None:
        self.captions.final(utt, outcome)
        if self.playback.is_open(utt.id):
            self.playback.end_utterance(utt.id)  # its timeline is logged when playback is done
        else:
            self._log_timeline(utt.id, utt.timeline)
        if outcome.kind == "translated":
            self._service_problem = None
            log.info("utterance %d translated: %s", utt.id, outcome.text)
        else:
            self.health.error(f"utterance {utt.id} {outcome.kind}: {outcome.reason}")
            log.warning(
                "utterance %d %s: %s %s", utt.id, outcome.kind, outcome.reason, outcome.detail
            )

    def _on_playback(self, event: PlaybackEvent) -> None:
        if isinstance(event, PlaybackFinished) and event.timeline is not None:
            self._log_timeline(event.utt_id, event.timeline)

    @staticmethod
    def _log_timeline(utt_id: int, t: Timeline) -> None:
        base = t.speech_end_detected
        stamps = {
            "request_sent": t.request_sent,
            "first_text": t.first_text,
            "first_audio": t.first_audio,
            "first_sample_to_device": t.first_sample_to_device,
            "last_sample_drained": t.last_sample_drained,
        }
        record = {"id": utt_id, "speech_end_detected": base}
        record |= {k: v for k, v in stamps.items() if v}
        log.info("timeline %s", json.dumps(record))

    async def _supervise(self) -> None:
        """Derive the conditions the status shows; tell systemd READY once audio flows
        (or after `audio.ready_timeout_s`, saying what is missing), then keep its status
        line up to date."""
        ready = False
        told = ""
        while True:
            now = time.monotonic()
            self._check_health(now)
            waited = now - self._started_at
            if not ready and (self._last_frame or waited >= self.settings.audio.ready_timeout_s):
                ready = True
                self.health.started = True
                self._check_health(now)
                told = self._systemd_status()
                self.notifier.ready(told)
                log.info("ready: %s", told)
            elif ready and (text := self._systemd_status()) != told:
                told = text
                self.notifier.status(text)
            await asyncio.sleep(SUPERVISE_S)

    def _systemd_status(self) -> str:
        h = self.health
        name = self.source.device_name
        hearing = f"listening on {name}" if self._last_frame else "no input"
        problems = "; ".join(f"{what}: {why}" for what, why in sorted(h.problems.items()))
        return f"{h.state().value}: {hearing}" + (f" ({problems})" if problems else "")

    def _check_health(self, now: float) -> None:
        h = self.health
        h.translating = self.sequencer.in_flight > 0
        h.speaking = self.playback.state is PlaybackState.SPEAKING
        silent = now - (self._last_frame or now) > NO_AUDIO_S or not self._last_frame
        mic = "no audio from the input device" if self.source.device_name else "no input device"
        h.problem("microphone", mic if silent and h.started else None)
        unavailable = self.playback.state is PlaybackState.UNAVAILABLE
        h.problem("speaker", "output device unavailable" if unavailable else None)
        refusal = self.translator.refusal
        if refusal != h.fatal:
            h.fatal = refusal
            if refusal:
                h.error(f"service: {refusal}")
        h.problem("service", refusal or self._service_problem)
        h.paused = self.budget.state() is BudgetState.EXHAUSTED
        h.problem("budget", self.budget.problem())
        conflict = self.mqtt.conflict() if self.mqtt is not None else None
        h.problem("mqtt.conflict", conflict)
        if self.mqtt is not None and h.started:
            unreachable = not self.mqtt.connected and conflict is None
            h.problem("mqtt", "broker unreachable" if unreachable else None)
        if self.mqtt is not None:
            h.problem("room_id", self._room_conflict(self.mqtt.other_devices()))

    def _room_conflict(self, others: Mapping[str, str]) -> str | None:
        if not others:
            return None
        who = ", ".join(f"{host} (device {device})" for device, host in sorted(others.items()))
        return f"another device also uses room_id {self.settings.mqtt.room_id!r}: {who}"

    def _healthy(self) -> bool:
        """Worth keeping: the microphone delivered within `audio.no_input_restart_s`."""
        limit = self.settings.audio.no_input_restart_s
        silent_s = time.monotonic() - (self._last_frame or self._started_at)
        why = ""
        if limit > 0 and silent_s >= limit:
            why = f"no audio from the microphone for {silent_s:.0f} s"
        if why != self._unhealthy:
            if why:
                log.error("%s: not feeding the watchdog (systemd restarts the daemon)", why)
            self._unhealthy = why
        return not why

    async def _check_key(self) -> None:
        """`api.check_key_at_start`: one 1 s text-only clip, so a wrong key shows at once."""
        if not self.settings.api.check_key_at_start:
            return
        room = self.room.current.model_copy(update={"speech": False})
        outcome: Outcome | None = None
        async with aclosing(self._translate(probe_utterance(), room)) as events:
            async for event in events:
                if isinstance(event, Outcome):
                    outcome = event
                    break
        if outcome is None:
            return
        if outcome.kind == "translated":
            log.info("start check: the service accepted the API key")
        elif outcome.kind == "dropped":
            log.info("start check skipped: %s", outcome.detail)
        elif outcome.reason in FATAL_KINDS:
            log.error("start check: the service refused: %s", outcome.detail)
        else:
            self._service_problem = f"not reachable at start ({outcome.reason})"
            log.warning("start check: service %s: %s", outcome.reason, outcome.detail)

    # -- run and stop ----------------------------------------------------------------------

    async def run(self) -> int:
        fix_mmap_threshold()  # clip-sized buffers back to the system when freed (heap.py)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        publisher = StatusPublisher(
            self.status, self._publish_status, self.settings.mqtt.status_interval_s
        )
        try:
            async with asyncio.TaskGroup() as group:

                def start(name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
                    return group.create_task(coro, name=name)

                listen = start("listen", self._listen())
                screen = start("screen", self.handoff.run())
                dispatch = start("dispatch", self.sequencer.run())
                deliver = start("deliver", self._deliver())
                others = [
                    start("playback", self.playback.run()),
                    start("status", publisher.run()),
                    start("supervise", self._supervise()),
                    start("watchdog", self.notifier.watchdog(self._healthy)),
                    start("caption-lanes", self.lanes.run()),
                    start("recent-captions", self.recent.run()),
                    start("check-key", self._check_key()),
                    start("control", self.control.run()),
                    start("heap-trim", self.heap.run()),
                ]
                if self.mqtt is not None:
                    others.append(start("mqtt", self.mqtt.run()))
                if self.shared is not None:
                    others.append(start("shared-budget", self.shared.run()))
                await self._stop.wait()
                await self._shutdown(listen, screen, dispatch, deliver, others)
        finally:
            await self.translator.aclose()
            self.notifier.close()
        return 0

    async def _shutdown(
        self,
        listen: asyncio.Task[None],
        screen: asyncio.Task[None],
        dispatch: asyncio.Task[None],
        deliver: asyncio.Task[None],
        others: list[asyncio.Task[None]],
    ) -> None:
        log.info("stopping")
        self.notifier.stopping()
        listen.cancel()
        screen.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await screen
        self.handoff.stop("shutdown")
        self.sequencer.drop_waiting("shutdown")
        self.sequencer.close()
        dispatch.cancel()  # in-flight translations end as dropped(shutdown)
        await self.lanes.stop(timeout_s=2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(deliver), timeout=2.0)
        drained = await self.playback.drain(self.settings.audio.stop_cap_s, skip_waiting=True)
        if not drained:
            log.warning("speech still playing after %.1f s: cut", self.settings.audio.stop_cap_s)
        if self.shared is not None:
            await self.shared.close()  # the account's other rooms share at once
        if self.mqtt is not None:
            self.health.stopping = True
            self.recent.clear()  # a room's words do not stay on the broker
            self.mqtt.publish_status(self.status.snapshot())
            await self.mqtt.close()
        for task in (deliver, *others):
            task.cancel()


def run_daemon(settings: Settings, api_key: str | None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 78 on a configuration error."""
    if api_key is None:
        raise ConfigError(
            [
                "api key: none found; set DASHSCOPE_API_KEY or api.key_file "
                "(README: the demo runs without one, against the local simulator)"
            ]
        )
    devices = list_devices(probe_rates=False)
    profile = choose_profile(settings, devices)
    daemon = Daemon(settings, api_key, profile, output_spec(settings, profile, devices))
    log.info(
        "roomtranslate starting: room %s, %s → %s, profile %s",
        settings.mqtt.room_id,
        settings.room.source_lang,
        settings.room.target_lang,
        profile.name if profile is not None else "(defaults)",
    )
    try:
        return asyncio.run(daemon.run())
    except Exception:  # a bug in a stage: say so in the journal; systemd restarts us
        log.critical("roomtranslate stopped by an internal error", exc_info=True)
        return 1
