"""Clip → service: each clip the segmenter cuts is screened for our own speech off the
event loop (`daemon/echo/screening.py`), then handed to the sequencer (the translation we
play) and to the caption lanes (the extra caption languages), or rejected: its utterance
ends as dropped, with the reason (`echo`, counted as `echo_dropped`; `screen_backlog`;
`shutdown`)."""

from __future__ import annotations

import logging

from daemon.captions.lanes import CaptionLanes
from daemon.counters import Counters
from daemon.echo import EchoStage, Verdict
from daemon.echo.screening import Screening
from daemon.sequencer import Sequencer
from daemon.values import Utterance

log = logging.getLogger(__name__)


class Handoff:
    """`offer` clips as they are cut; `run` screens and hands them on; `stop` rejects the
    rest (after cancelling `run`)."""

    def __init__(
        self, echo: EchoStage, sequencer: Sequencer, lanes: CaptionLanes, counters: Counters
    ) -> None:
        self._sequencer = sequencer
        self._lanes = lanes
        self._counters = counters
        self._screening = Screening(echo, self._send, self._reject, counters)

    def offer(self, utt: Utterance) -> None:
        self._screening.offer(utt)

    @property
    def backlog(self) -> int:
        """Clips waiting to be screened, or being screened."""
        return self._screening.backlog

    async def run(self) -> None:
        await self._screening.run()

    def stop(self, reason: str) -> None:
        self._screening.stop(reason)

    def _send(self, utt: Utterance) -> None:
        self._sequencer.submit(utt)
        self._lanes.submit(utt)
        log.info("utterance %d: %.2f s of speech", utt.id, utt.duration_s)

    def _reject(self, utt: Utterance, reason: str, verdict: Verdict | None) -> None:
        self._sequencer.reject(utt, reason)
        if verdict is None:
            log.warning("utterance %d dropped: %s", utt.id, reason)
            return
        self._counters.add("echo_dropped")
        log.info("utterance %d dropped, our own speech: %s", utt.id, verdict.describe())
