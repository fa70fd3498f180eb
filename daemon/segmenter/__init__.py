"""The VAD stage: conditioned frames in, speech-started events and utterance clips out.

- condition.py: DC / rumble high-pass and the frame level;
- detectors.py: the speech detectors (webrtcvad; earshot and silero scorers, one
  threshold policy);
- voicing.py: one decision per frame (detector + energy floor + room noise);
- machine.py: the QUIET/SPEAKING state machine cutting utterances.
"""

from daemon.segmenter.machine import Segmenter, SegmentEvent, SpeechStarted
from daemon.segmenter.voicing import FrameJudge, Judged, NoiseFloor, Voicing, conditioned

__all__ = [
    "FrameJudge",
    "Judged",
    "NoiseFloor",
    "SegmentEvent",
    "Segmenter",
    "SpeechStarted",
    "Voicing",
    "conditioned",
]
