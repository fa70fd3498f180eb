"""Languages and voices of qwen3-livetranslate-flash (../shared/api/CONTRACT.md)."""

from __future__ import annotations

SPEECH_LANGUAGES: frozenset[str] = frozenset(
    {"en", "zh", "ru", "fr", "de", "pt", "es", "it", "ko", "ja", "yue"}
)
TEXT_ONLY_LANGUAGES: frozenset[str] = frozenset({"id", "vi", "th", "ar", "hi", "el", "tr"})
LANGUAGES: frozenset[str] = SPEECH_LANGUAGES | TEXT_ONLY_LANGUAGES

_WIDE = ("zh", "en", "fr", "de", "ru", "it", "es", "pt", "ja", "ko")
VOICES: dict[str, frozenset[str]] = {
    "Cherry": frozenset(_WIDE),
    "Ethan": frozenset(_WIDE),
    "Nofish": frozenset(_WIDE),
    "Jada": frozenset({"zh"}),
    "Dylan": frozenset({"zh"}),
    "Sunny": frozenset({"zh"}),
    "Peter": frozenset({"zh"}),
    "Eric": frozenset({"zh"}),
    "Kiki": frozenset({"yue"}),
}


def speaks(target: str) -> bool:
    """True when the service can synthesise speech in `target`."""
    return target in SPEECH_LANGUAGES


def voices_for(target: str) -> list[str]:
    """The voices that speak `target`, in the contract's order."""
    return [name for name, langs in VOICES.items() if target in langs]


def check_voice(voice: str, target: str) -> str | None:
    """None when `voice` can speak `target`, else the reason it cannot."""
    if voice not in VOICES:
        return f"unknown voice {voice!r}; voices: {', '.join(VOICES)}"
    if speaks(target) and target not in VOICES[voice]:
        allowed = ", ".join(voices_for(target))
        return f"voice {voice!r} does not speak {target!r}; voices for {target!r}: {allowed}"
    return None
