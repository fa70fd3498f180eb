"""Faults, latencies and accounting: the settings a test changes at run time, the fault
each request gets, and what the simulator counts and keeps of every request."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import soundfile as sf

from daemon.simulator.account import Account
from daemon.simulator.protocol import ApiError, ClipRequest

FAULTS = ("ok", "429", "500", "401", "403", "cut", "cut0", "stream_error", "stall", "garbage")
NUMERIC_SETTINGS = (
    "first_text_ms",
    "first_audio_ms",
    "chunk_ms",
    "jitter_ms",
    "retry_after",
    "stall_s",
    "audio_chunk_ms",
    "account_rpm",
    "account_tpm",
)


def fault_error(fault: str, retry_after: float) -> ApiError:
    """The HTTP error a status fault answers with."""
    if fault == "429":
        return ApiError(
            429,
            "Throttling.RateQuota",
            "Requests rate limit exceeded, please try again later.",
            type_="rate_limit_error",
            headers={"Retry-After": _fmt_seconds(retry_after)},
        )
    if fault == "500":
        return ApiError(
            500, "InternalError", "An internal error has occured.", type_="internal_error"
        )
    if fault == "401":
        return ApiError(401, "invalid_api_key", "Incorrect API key provided.")
    return ApiError(403, "access_denied", "Access denied: no access to this model.")


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Settings:
    """Latency and fault parameters, changeable at runtime."""

    first_text_ms: float = 50.0
    first_audio_ms: float = 50.0
    chunk_ms: float = 10.0
    jitter_ms: float = 0.0
    retry_after: float = 1.0
    stall_s: float = 30.0
    audio_chunk_ms: float = 100.0
    account_rpm: float = 0.0  # the account's requests a minute, 0 = no limit (account.py)
    account_tpm: float = 0.0  # its tokens a minute, 0 = no limit
    speech_dir: str = ""  # speak with recordings from here instead of tones
    keep_clips: str = ""  # write every clip received to <n>-<digest>.wav here


def check_faults(faults: object) -> list[str]:
    """Validate a fault list; raise ValueError naming a bad entry."""
    if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
        raise ValueError("faults must be a list of strings")
    for fault in faults:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return list(faults)


class SimState:
    """All mutable simulator state, guarded by one lock."""

    def __init__(
        self,
        settings: Settings,
        faults: Iterable[str],
        seed: int,
        api_key: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self._account = Account(clock)
        self._lock = threading.Lock()
        self._settings = settings
        self._faults: deque[str] = deque(faults)
        self._rng = random.Random(seed)
        self._requests = 0
        self._by_status: Counter[str] = Counter()
        self._clips: list[dict[str, Any]] = []

    @property
    def settings(self) -> Settings:
        with self._lock:
            return self._settings

    def charge(self, tokens: int) -> ApiError | None:
        """The account's limits: None when a request of `tokens` fits (it is counted),
        else the 429 that refuses it."""
        with self._lock:
            s = self._settings
            return self._account.admit(s.account_rpm, s.account_tpm, tokens)

    def admit(self, clip: ClipRequest, header_fault: str | None) -> tuple[str, float]:
        """Pick the fault for a valid request, record its clip; return (fault, jitter_s)."""
        with self._lock:
            if header_fault is not None:
                fault = header_fault
            else:
                fault = self._faults.popleft() if self._faults else "ok"
            jitter_s = self._rng.uniform(0.0, self._settings.jitter_ms) / 1000.0
            self._clips.append(_clip_record(clip, fault))
            if self._settings.keep_clips:
                name = f"{len(self._clips):04d}-{clip.digest}.wav"
                sf.write(str(Path(self._settings.keep_clips) / name), clip.pcm, clip.rate)
            return fault, jitter_s

    def count(self, status: int, key: str | None = None) -> None:
        with self._lock:
            self._requests += 1
            self._by_status[str(status)] += 1
            self._account.count(key, status)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "faults_left": list(self._faults),
                "clips": [dict(c) for c in self._clips],
                "settings": asdict(self._settings),
                "account": self._account.snapshot(),
            }

    def control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a control request; raise ValueError if any part is bad (nothing applied)."""
        unknown = set(changes) - {"faults", *NUMERIC_SETTINGS}
        if unknown:
            raise ValueError(f"unknown control keys: {', '.join(sorted(unknown))}")
        faults = check_faults(changes["faults"]) if "faults" in changes else None
        numbers = {k: non_negative(k, v) for k, v in changes.items() if k != "faults"}
        with self._lock:
            self._settings = replace(self._settings, **numbers)  # type: ignore[arg-type]
            if faults is not None:
                self._faults = deque(faults)
        return self.snapshot()

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._requests = 0
            self._by_status.clear()
            self._clips.clear()
            self._account.reset()


def non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    if name == "audio_chunk_ms" and value <= 0:
        raise ValueError("audio_chunk_ms must be positive")
    return float(value)


def _clip_record(clip: ClipRequest, fault: str) -> dict[str, Any]:
    return {
        "digest": clip.digest,
        "duration_s": clip.duration_s,
        "rate": clip.rate,
        "target": clip.target,
        "source": clip.source,
        "voice": clip.voice,
        "modalities": list(clip.modalities),
        "fault": fault,
    }
