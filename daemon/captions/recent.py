"""Recent captions for displays that join late: `captions/<lang>/recent`, retained.

Each language keeps its last `captions.recent` finals that hold text; after every
such final the whole document is published again (retained, QoS 1), so a display that
connects or reloads shows the conversation at once. After `captions.recent_clear_s` without a
final, and on a clean stop, every document is cleared (an empty retained message), so a
room's words do not stay on the broker overnight.

The document: {"target_lang": "de", "captions": [final event, ...]} (oldest first).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

# publish(lang, document): None clears the retained document.
PublishRecent = Callable[[str, Mapping[str, Any] | None], None]


class RecentCaptions:
    """The last finals of each language, and when the room went quiet."""

    def __init__(
        self,
        publish: PublishRecent,
        keep: int,
        clear_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._keep = keep
        self._clear_after_s = clear_after_s
        self._clock = clock
        self._recent: dict[str, deque[Mapping[str, Any]]] = {}
        self._last_final = 0.0
        self._changed = asyncio.Event()

    def add(self, lang: str, event: Mapping[str, Any]) -> None:
        """A final caption of `lang` went out."""
        if self._keep == 0 or not event.get("text"):
            return
        recent = self._recent.setdefault(lang, deque(maxlen=self._keep))
        recent.append(dict(event))
        self._last_final = self._clock()
        self._publish(lang, {"target_lang": lang, "captions": list(recent)})
        self._changed.set()

    def documents(self) -> dict[str, list[Mapping[str, Any]]]:
        return {lang: list(events) for lang, events in self._recent.items()}

    def clear(self) -> int:
        """Clear every document on the broker; the number cleared."""
        langs = list(self._recent)
        for lang in langs:
            self._publish(lang, None)
        self._recent.clear()
        return len(langs)

    async def run(self) -> None:
        """Clear everything once the room has been quiet for `clear_after_s`."""
        while True:
            if not self._recent:
                self._changed.clear()
                await self._changed.wait()
                continue
            quiet_for = self._clock() - self._last_final
            if quiet_for >= self._clear_after_s:
                self.clear()
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._clear_after_s - quiet_for)
