"""The caption display page in a real browser: Debian's headless Chromium (Playwright).

Mosquitto serves the page itself (a websockets listener with `http_dir`, the page copied
there as `roomtranslate display-config` does) beside its TCP listener. The real daemon
runs on the sound rig against the simulator (scripts/e2e_harness.py), or the daemon's own
caption builder and MQTT link publish crafted events. What is asserted is what the page
shows: its lines (text, partial or final), its banner, its QR code decoded from pixels.
Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.captions import Captions
from daemon.config import MqttSettings, RoomSettings
from daemon.counters import Counters
from daemon.display import PAGE_DIR
from daemon.display.install import copy_page
from daemon.mqtt import MqttLink
from daemon.values import Outcome, Timeline, Utterance, UtteranceStats
from scripts.broker import Broker, Recorder, eventually, free_port
from scripts.e2e_harness import CAPTIONS, TARGET_LANG, Harness, Session
from scripts.paths import PROJECT_ROOT
from scripts.procs import stop_process
from tests.browser import PHONE, TV, artifact_dir, chromium, missing
from tests.rigutil import require_programs

pytestmark = [pytest.mark.rig, pytest.mark.e2e]

SETTINGS = {"ROOM__SPEECH": "false", "ROOM__CAPTION_LANGS": '["de"]'}
PARTS = [("en_sr_english", 0.5), ("fr_sr_french", 1.5), ("ko_pv_leopard", 1.5)]
SLOW_TEXT = {"chunk_ms": 300}  # each word of a caption 300 ms after the last: partials show

# Every change of a caption line, recorded in the page: (element id, utterance, class, text).
RECORDER = """
window.__changes = [];
document.addEventListener("DOMContentLoaded", () => {
  let next = 0;
  const box = document.getElementById("captions");
  const note = () => {
    for (const line of box.querySelectorAll("p")) {
      if (line.__id === undefined) line.__id = next++;
      const state = [line.__id, line.dataset.utterance, line.className, line.textContent];
      if (JSON.stringify(state) !== line.__last) {
        line.__last = JSON.stringify(state);
        window.__changes.push(state);
      }
    }
  };
  new MutationObserver(note).observe(box, {
    childList: true, subtree: true, characterData: true, attributes: true,
  });
});
"""
LINES_JS = "[...document.querySelectorAll('#captions p')].map(p => [p.className, p.textContent])"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if why := missing():
        if os.environ.get("CI"):  # CI installs Chromium (scripts/setup.sh): never skip there
            pytest.fail(why)
        pytest.skip(why)
    require_programs()
    with chromium() as context:
        yield context


@pytest.fixture(scope="module")
def setup(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, int, Any]]:
    workdir = tmp_path_factory.mktemp("display")
    www = workdir / "www"
    copy_page(www)
    ws_port = free_port()
    options = [f"listener {ws_port} 127.0.0.1", "protocol websockets", f"http_dir {www}"]
    with Harness(workdir, broker_options=options) as harness:
        yield harness, ws_port, browser


@pytest.fixture
def harness(setup: tuple[Harness, int, Any]) -> Harness:
    setup[0].reset_simulator()
    return setup[0]


@pytest.fixture
def context(setup: tuple[Harness, int, Any]) -> Any:
    return setup[2]


@pytest.fixture
def page_url(setup: tuple[Harness, int, Any]) -> Callable[..., str]:
    def url(room: str = "room-1", lang: str = TARGET_LANG) -> str:
        return f"http://127.0.0.1:{setup[1]}/?room={room}&lang={lang}"

    return url


def open_page(context: Any, url: str, viewport: dict[str, int] | None = None) -> Any:
    page = context.new_page()
    page.set_viewport_size(viewport or TV)
    page.add_init_script(RECORDER)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url)
    page.wait_for_function("document.getElementById('link').classList.contains('up')")
    return page


def lines(page: Any) -> list[tuple[str, str]]:
    return [(cls, text) for cls, text in page.evaluate(LINES_JS)]


def banner(page: Any) -> str:
    shown = page.evaluate("!document.getElementById('banner').hidden")
    return str(page.evaluate("document.getElementById('banner').textContent")) if shown else ""


def wait_page(page: Any, predicate: Callable[[], bool], within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(50)
    return True


def finals_of(session: Session, lang: str) -> list[str]:
    return [c.text for c in session.finals() if c.topic == CAPTIONS + lang]


def final_lines(page: Any) -> list[str]:
    return [text for cls, text in lines(page) if "final" in cls.split()]


def decode_qr(png: bytes) -> list[str]:
    import zxingcpp
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    return [result.text for result in zxingcpp.read_barcodes(image)]


def in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run an asyncio coroutine beside Playwright's sync API (its own loop, own thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result(30)


# ----------------------------------------------------------------------- the real daemon


def test_captions_in_order_partials_become_finals_late_joiner_sees_recent(
    harness: Harness, context: Any, page_url: Callable[..., str]
) -> None:
    harness.reset_simulator(**SLOW_TEXT)
    scene = harness.compose(PARTS, "display", tail_s=0.5)
    count = len(PARTS)
    first = open_page(context, page_url())
    with harness.session(SETTINGS) as s:
        assert wait_page(first, lambda: banner(first) == ""), banner(first)
        harness.play(scene).wait()
        assert s.wait_finals(2 * count, 15.0), s.daemon.log_tail()
        want = finals_of(s, TARGET_LANG)
        assert wait_page(first, lambda: final_lines(first) == want), (lines(first), want)
        changes = first.evaluate("window.__changes")
        # each utterance is one element, shown partial first, updated in place, then final
        for utt in range(1, count + 1):
            mine = [c for c in changes if c[1] == str(utt)]
            assert len({c[0] for c in mine}) == 1, mine
            classes = [c[2] for c in mine]
            assert "line partial" in classes and classes[-1] == "line final", mine
            final_text = mine[-1][3]
            assert all(final_text.startswith(c[3]) for c in mine), mine
        assert [c[1] for c in changes if c[2] == "line final"] == ["1", "2", "3"]
        artifact = artifact_dir() / "display-1080p.png"
        first.screenshot(path=str(artifact))

        # a display that joins now sees the conversation at once (the retained recent)
        began = time.monotonic()
        late = open_page(context, page_url())
        assert wait_page(late, lambda: final_lines(late) == want, 5.0), lines(late)
        joined_s = time.monotonic() - began
        # the language picker offers the room's languages; de shows de's captions
        options = late.evaluate("[...document.querySelectorAll('#lang option')].map(o => o.value)")
        assert options == [TARGET_LANG, "de"]
        late.select_option("#lang", "de")
        want_de = finals_of(s, "de")
        assert all(text.startswith("[de] clip ") for text in want_de)
        assert wait_page(late, lambda: final_lines(late) == want_de, 5.0), lines(late)
        assert "lang=de" in late.url
        phone = open_page(context, page_url(lang="de"), PHONE)
        assert wait_page(phone, lambda: final_lines(phone) == want_de, 5.0)
        phone.screenshot(path=str(artifact_dir() / "display-phone.png"))
        font_px = float(first.evaluate("parseFloat(getComputedStyle(captions).fontSize)"))
        phone_px = float(phone.evaluate("parseFloat(getComputedStyle(captions).fontSize)"))
        overflow = phone.evaluate("document.scrollingElement.scrollWidth - innerWidth")
    print(f"display: late joiner showed {count} recent captions in {joined_s:.2f} s")
    print(f"display: caption text {font_px:.0f} px at 1920x1080, {phone_px:.0f} px on a phone")
    assert font_px >= 48 and phone_px >= 22 and overflow <= 0
    for page in (first, late, phone):
        assert page.errors == []
        page.close()


def test_offline_banner_follows_the_daemon_and_the_page_reconnects(
    harness: Harness, context: Any, page_url: Callable[..., str]
) -> None:
    page = open_page(context, page_url())
    with harness.session(SETTINGS):
        assert wait_page(page, lambda: banner(page) == ""), banner(page)
    # the daemon stopped (SIGTERM): it left `offline`
    assert wait_page(page, lambda: "offline" in banner(page), 5.0), banner(page)
    page.screenshot(path=str(artifact_dir() / "display-offline.png"))
    scene = harness.compose([("en_sr_english", 0.3)], "display-back", tail_s=0.5)
    with harness.session(SETTINGS) as s:
        assert wait_page(page, lambda: banner(page) == "", 5.0), banner(page)
        # the broker goes away and comes back: the page says so, then reconnects by itself
        harness.broker.restart()
        assert wait_page(page, lambda: "reconnecting" in banner(page), 5.0), banner(page)
        assert wait_page(page, lambda: banner(page) == "", 15.0), banner(page)
        harness.play(scene).wait()
        assert s.wait_finals(2, 10.0)
        want = finals_of(s, TARGET_LANG)
        assert wait_page(page, lambda: final_lines(page)[-1:] == want, 5.0), lines(page)
    assert page.errors == []
    page.close()


# ------------------------------------------------------------------ crafted caption events


async def publish_events(broker: Broker, room: str, events: list[tuple[str, Outcome]]) -> None:
    """The daemon's caption builder and MQTT link publish `events` (text, outcome)."""
    settings = MqttSettings(host=broker.host, port=broker.port, room_id=room, reconnect_min_s=0.05)
    link = MqttLink(settings, Counters())
    task = asyncio.create_task(link.run())
    await eventually(lambda: link.connected)
    link.publish_status({"target_lang": "en", "caption_langs": []})
    captions = Captions(link.publish_caption, RoomSettings)
    stats = UtteranceStats(1, 1, -20.0, -6.0, False)
    now = time.time()
    for uid, (text, outcome) in enumerate(events, start=1):
        pcm = np.zeros(1, np.int16)
        utt = Utterance(uid, 0, 1, pcm, stats, now + uid, now + uid + 1, Timeline())
        captions.partial(utt, text[: len(text) // 2])
        captions.final(utt, Outcome(outcome.kind, outcome.reason, text=text))
    await asyncio.sleep(0.5)
    async with Recorder(broker, "#") as rec:  # a garbage message must not break it
        await rec.publish(f"roomtranslate/{room}/captions/en", b"{not json")
    await asyncio.sleep(0.3)
    task.cancel()


def test_captions_are_text_never_html(
    harness: Harness, context: Any, page_url: Callable[..., str]
) -> None:
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    # the page from anywhere else (here a file), the broker named by the `broker` parameter
    ws_url = page_url().split("?")[0].replace("http://", "ws://")
    page = open_page(
        context, (PAGE_DIR / "index.html").as_uri() + f"?broker={ws_url}&room=xss&lang=en"
    )
    in_thread(
        publish_events(
            harness.broker,
            "xss",
            [
                (hostile, Outcome("translated")),
                ("<b>bold?</b> & done", Outcome("translated")),
                ("cut off mid", Outcome("failed", "incomplete")),
            ],
        )
    )
    expected = [hostile, "<b>bold?</b> & done", "cut off mid"]
    assert wait_page(page, lambda: final_lines(page) == expected, 5.0), lines(page)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('#captions *:not(p)').length") == 0
    assert lines(page)[2][0] == "line final incomplete"
    assert page.errors == []
    page.close()


def test_qr_code_decodes_to_the_page_url(context: Any, page_url: Callable[..., str]) -> None:
    page = open_page(context, page_url(room="room-1", lang="de"))
    found = decode_qr(page.locator("#qr").screenshot())
    assert found == [page.url]
    assert page.url == page_url(room="room-1", lang="de")
    # a phone: the QR code behind its button
    phone = open_page(context, page_url(room="room-1", lang="de"), PHONE)
    assert not phone.locator("#qr").is_visible()
    phone.click("#share-toggle")
    assert phone.locator("#qr").is_visible()
    png = phone.screenshot()
    (artifact_dir() / "display-phone-qr.png").write_bytes(png)
    assert decode_qr(png) == [phone.url]
    kiosk = open_page(context, page_url(room="room-1", lang="de") + "&kiosk=1")
    assert not kiosk.locator("#lang").is_visible() and kiosk.locator("#qr").is_visible()
    for p in (page, phone, kiosk):
        assert p.errors == []
        p.close()


def test_the_page_files_are_served_by_mosquitto(setup: tuple[Harness, int, Any]) -> None:
    import urllib.request

    _, ws_port, _ = setup
    for name in ("", "display.js", "display.css", "vendor/mqtt.min.js", "vendor/qrcode.js"):
        with urllib.request.urlopen(f"http://127.0.0.1:{ws_port}/{name}", timeout=5) as reply:
            assert reply.status == 200 and reply.read()


# ---------------------------------------------------------------------------- the demo


def test_the_demo_prints_a_display_url_that_shows_its_captions(
    browser: Any, tmp_path: Path
) -> None:
    """scripts/start.sh's demo: open its printed URL in a browser, watch captions appear."""
    printed = tmp_path / "demo.out"
    with printed.open("w") as out:
        demo = subprocess.Popen(
            [sys.executable, "scripts/demo.py", "--duration", "15", "--quiet", "--no-qr"],
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline and demo.poll() is None:
            found = re.search(r"caption display.*: (http://\S+)", printed.read_text())
            url = found.group(1) if found else ""
            time.sleep(0.1)
        assert url, printed.read_text()
        page = open_page(browser, url)
        # opened before the demo speaks (it waits for the daemon's devices first)
        assert lines(page) == []
        assert wait_page(page, lambda: len(final_lines(page)) >= 1, 30.0), lines(page)
        # the room's languages are zh (speech) and en: the page takes the browser's, en
        caption = re.compile(r"\[(zh|en)\] clip \d+\.\d+s #[0-9a-f]{8}")
        assert all(caption.fullmatch(text) for text in final_lines(page)), lines(page)
        page.screenshot(path=str(artifact_dir() / "display-demo.png"))
        assert demo.wait(60) == 0, printed.read_text()
        page.close()
    finally:
        stop_process(demo, 20.0)
    assert "[zh] #1: " in printed.read_text()
