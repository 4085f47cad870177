"""The console in a real browser: Debian's chromium, headless, driven by Playwright, with
a fake microphone that plays a spoken question from a WAV file.

The Talk page calls the conversation agent of a real `switchboard serve` (the packaged
Whisper, LLM and Piper models): the question shows in the transcript as Whisper heard
it, the greeting it talks over is flushed from the page's jitter buffer (barge-in), the
answer's audio reaches the page and is played (the page's own counters), and the turn's
latency waterfall is drawn. The Watch page lists the call
while it is up and in the recent calls afterwards, with its record. Screenshots of both
pages (laptop and phone widths) go to artifacts/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import Server, switchboard

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
QUESTION = "What time do you open on Saturday?"
KEY_WORDS = ("time", "open", "saturday")
TOKEN = "console-test-token"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="espeak-ng and sox make the spoken question"),
]


def spoken_question(path: Path, lead_s: float, tail_s: float) -> Path:
    """espeak-ng speech at 48 kHz (a microphone's rate) after `lead_s` of silence, then
    `tail_s` of silence for the answer."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(raw), QUESTION], check=True,
                   capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(path),
                    "pad", str(lead_s), str(tail_s)], check=True, capture_output=True)
    return path


@contextmanager
def chromium(microphone: Path) -> Iterator[object]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            # %noloop: the question is asked once, not again every time the file ends.
            f"--use-file-for-fake-audio-capture={microphone}%noloop",
            "--autoplay-policy=no-user-gesture-required",
        ])
        try:
            yield browser
        finally:
            browser.close()


def stats(page: object) -> dict:
    return page.evaluate("() => ({...window.talkStats})")  # type: ignore[attr-defined]


def record(server: Server, call_id: str) -> dict:
    url = f"http://127.0.0.1:{server.http_port}/calls/{call_id}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_talk_to_the_conversation_agent_and_watch_the_call(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # The question comes 1.5 s into the call, over the greeting (about 3 s): a barge-in.
    wav = spoken_question(tmp_path / "question.wav", lead_s=1.5, tail_s=40.0)
    with switchboard(tmp_path) as server, chromium(wav) as browser:
        base = f"http://127.0.0.1:{server.http_port}/console"
        context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        talk = context.new_page()
        talk.goto(f"{base}/")
        talk.wait_for_selector("#agent option[value=conversation]", state="attached")
        talk.select_option("#agent", "conversation")
        talk.click("#call")
        talk.wait_for_function("window.talkStats.callId !== null", timeout=15_000)
        call_id = stats(talk)["callId"]

        # Watch, while the call is up: the call is listed, from the browser door.
        watch = context.new_page()
        watch.goto(f"{base}/watch")
        row = watch.locator(f'#active tr[data-call-id="{call_id}"]')
        row.wait_for(timeout=10_000)
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "browser" and cells[2] == "conversation", cells
        assert cells[3] in ("listening", "thinking", "speaking"), cells

        # The question, as Whisper heard it.
        caller = talk.locator("#transcript li.caller .text").first
        caller.wait_for(timeout=90_000)
        heard = caller.inner_text().strip()
        assert any(word in heard.lower() for word in KEY_WORDS), heard
        before = stats(talk)
        # The answer plays: at least a second more audio received and played.
        talk.wait_for_function(
            f"window.talkStats.played >= {before['played'] + 50}", timeout=90_000)
        talk.locator("#transcript li.agent .text").first.wait_for(timeout=30_000)
        # The turn closes once its answer has been heard: its waterfall is drawn.
        talk.locator("#waterfalls figure").first.wait_for(timeout=90_000)
        waterfall = talk.inner_text("#waterfalls figure")
        assert "Response latency" in waterfall and "Speech recognition" in waterfall, waterfall
        talk.screenshot(path=str(ARTIFACTS / "console-talk.png"), full_page=True)
        # The table is redrawn every second: look the cell up afresh on every poll.
        watch.wait_for_function(
            "id => Number(document.querySelector(`#active tr[data-call-id='${id}'] "
            "td[data-label=Turns]`)?.textContent) >= 1", arg=call_id, timeout=10_000)
        watch.screenshot(path=str(ARTIFACTS / "console-watch-live.png"), full_page=True)

        during = stats(talk)
        assert during["received"] >= during["played"] > 0 and during["sent"] > 200, during
        assert during["cleared"] >= 1, during  # the greeting was cut off and flushed

        # Hang up (keyboard: Escape), then Watch moves the call to the recent calls.
        talk.keyboard.press("Escape")
        talk.wait_for_function("window.talkStats.ended !== null", timeout=10_000)
        assert stats(talk)["ended"] == "remote_hangup"
        row.wait_for(state="detached", timeout=10_000)
        recent = watch.locator(f'#recent tr[data-call-id="{call_id}"]')
        recent.wait_for(timeout=15_000)
        watch.wait_for_function(
            f'document.querySelector(\'#recent tr[data-call-id="{call_id}"]\')'
            '.innerText.includes("remote_hangup")', timeout=15_000)
        recent.get_by_role("button").click()
        watch.locator("#details-transcript li.caller").first.wait_for(timeout=10_000)
        assert heard in watch.inner_text("#details-transcript")
        watch.screenshot(path=str(ARTIFACTS / "console-watch.png"), full_page=True)

        phone = browser.new_context(viewport={"width": 390, "height": 844},  # type: ignore[attr-defined]
                                    is_mobile=True, has_touch=True)
        for name, path in (("talk", "/"), ("watch", "/watch")):
            page = phone.new_page()
            page.goto(f"{base}{path}")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / f"console-{name}-phone.png"), full_page=True)

        saved = record(server, call_id)
    assert saved["transport"] == "browser" and saved["agent"] == "conversation", saved
    assert saved["outcome"] == "remote_hangup"
    assert saved["transcript"][0] == {"role": "caller", "text": heard}


def test_keyboard_call_with_a_token(tmp_path: Path) -> None:
    """The echo agent, a console token: without it the page says so; with it the call
    is placed from the keyboard alone and the echoed audio plays."""
    wav = spoken_question(tmp_path / "question.wav", lead_s=0.5, tail_s=10.0)
    env = {"SWITCHBOARD_CONSOLE__TOKEN": TOKEN}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server, chromium(wav) as browser:
        base = f"http://127.0.0.1:{server.http_port}/console"
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(f"{base}/")
        page.wait_for_function("document.querySelector('#status').textContent"
                               ".includes('token')", timeout=10_000)
        assert page.is_disabled("#call")

        page.goto(f"{base}/?token={TOKEN}")
        page.wait_for_selector("#agent option[value=echo]", state="attached")
        page.wait_for_function("!document.querySelector('#call').disabled")
        page.focus("#agent")
        page.keyboard.press("Tab")  # to the Call button
        assert page.evaluate("document.activeElement.id") == "call"
        page.keyboard.press("Enter")
        page.wait_for_function("window.talkStats.played >= 100", timeout=20_000)
        page.keyboard.press("Escape")
        page.wait_for_function("window.talkStats.ended !== null", timeout=10_000)
        assert stats(page)["ended"] == "remote_hangup"
        assert stats(page)["received"] >= 100
