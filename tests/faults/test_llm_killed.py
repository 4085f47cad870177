"""Fault: the LLM server is killed (SIGKILL) in the middle of an answer.

A real `switchboard serve` (conversation agent, packaged Whisper and Piper) uses an
Ollama server: the fake (tests/pipeline/fake_ollama.py, Ollama's wire format over real
HTTP) in a process of its own. The caller (`switchboard call`, the project's UAC) asks a
question; the fake streams the first sentence of its answer and then goes silent, and the
test kills its process, so the server sees the connection die mid-stream as it would
when Ollama crashes. The caller must hear the first sentence and then the apology, the
call must stay up until the caller hangs up, the process must stay up, the error must be
counted and logged with the call id, and the turn must be in the call record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.faults.common import ROOT, get, metric, wait_for
from tests.helpers import EXE, switchboard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="espeak-ng and sox make the spoken question"),
]

# The first sentence is spoken, then the stream stops after piece 5 and the server dies.
REPLY = ("We", " open", " at", " nine.", " On", " Sunday", " we", " rest.")


def test_the_llm_server_killed_mid_answer(tmp_path: Path) -> None:
    from tests.sip.test_conversation_call import say

    question = tmp_path / "question.wav"
    say(question, "What time do you open on Saturday?", lead_s=4.0)  # after the greeting
    fake = subprocess.Popen([sys.executable, "-m", "tests.pipeline.fake_ollama", *REPLY],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert fake.stdout is not None and fake.stdin is not None
        url = fake.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        env = {"SWITCHBOARD_LLM__ENGINE": "ollama", "SWITCHBOARD_LLM__HOST": url,
               "SWITCHBOARD_LLM__MODEL": "smollm2:135m", "SWITCHBOARD_LOG__FORMAT": "json",
               "SWITCHBOARD_SIP__RTP_PORT_MIN": "44600", "SWITCHBOARD_SIP__RTP_PORT_MAX": "44698"}
        with switchboard(tmp_path, env=env) as server:
            engines = server.http_json("/readyz")["engines"]  # type: ignore[index]
            assert engines["llm_fallback"] is False, engines
            fake.stdin.write("hang 5\n")  # from now on: five pieces, then silence
            fake.stdin.flush()
            caller = subprocess.Popen(
                [EXE, "call", f"sip:bot@127.0.0.1:{server.sip_port}", "--play", str(question),
                 "--tail", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            killed = threading.Event()

            def kill_when_streaming() -> None:
                for line in fake.stdout:  # type: ignore[union-attr]
                    if line.strip() == "streaming":
                        # The fake sends its five pieces at once, then hangs: kill it.
                        threading.Event().wait(0.5)
                        os.kill(fake.pid, signal.SIGKILL)
                        killed.set()
                        return

            watcher = threading.Thread(target=kill_when_streaming, daemon=True)
            watcher.start()
            out, err = caller.communicate(timeout=120)
            assert killed.is_set(), "the server never asked the LLM"
            assert caller.returncode == 0, out + err
            result = json.loads(out)
            # The caller kept the call until it hung up itself, and heard a reply.
            assert (result["status"], result["hangup"]) == ("completed", "local"), result
            assert result["reply_latency_s"] is not None, result

            call = wait_for("the call's record", lambda: (
                c if (c := get(server, f"/calls/{result['call_id']}")[1]).get("outcome")
                else None))
            text = server.metrics()
            assert server.proc.poll() is None
            assert get(server, "/healthz")[0] == 200
        log = server.log()
    finally:
        if fake.poll() is None:
            fake.kill()
        fake.wait(timeout=10)

    assert metric(text, "switchboard_stage_errors_total", stage="llm") == 1, text
    assert metric(text, "switchboard_phrases_played_total", phrase="apology") == 1
    # The turn is in the record: what the caller said, the sentence it heard, the error.
    assert call["turn_count"] == 1 and call["errors"] == 1, call
    turn = call["turns"][0]
    assert turn["transcript"] and turn["answer"] == "We open at nine.", turn
    assert turn["outcome"] == "error" and "LlmStreamError" in json.dumps(turn), turn
    says = [e["phrase"] for e in call["events"] if e["event"] == "say"]
    assert says == ["greeting", "apology"], says
    # Logged with the call id, as JSON.
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    failed = [x for x in lines if x.get("msg", "").startswith("llm failed")]
    assert failed and failed[0].get("call_id") == result["call_id"], failed or log[-3000:]
