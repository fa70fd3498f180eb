"""Captions for the displays: events per language, extra caption languages, recent finals.

events.py  one JSON event per text update, one final per utterance and language
lanes.py   extra caption languages (`room.caption_langs`): own requests, own order
recent.py  the retained `captions/<lang>/recent` document for late joiners
"""

from daemon.captions.events import Captions, Publish, count_usage, iso

__all__ = ["Captions", "Publish", "count_usage", "iso"]
