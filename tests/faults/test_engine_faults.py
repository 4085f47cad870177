"""Faults in the models, with the call record written: ASR raising, TTS raising, and a
model queue full (the real ModelWorker, its one thread busy).

The conversation runs on scripted engines (tests/pipeline/test_conversation.py's
harness: a ManualClock, a leg that plays 20 ms per frame), wrapped by the Recorder as
the app does, writing to a real SQLite file. The caller hears the apology (or "please
hold"), the call goes on to a second turn, the error is counted and logged with the call
id, and the record holds both turns: the failed one with its error, the next answered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.workers import ModelWorker
from switchboard.config import RecordsConfig
from switchboard.records.recorder import Recorder
from switchboard.records.sqlite import SqliteStore
from tests.pipeline.test_conversation import (
    Call,
    ScriptedAsr,
    ScriptedLlm,
    ScriptedTts,
    settle,
    silence,
    voice,
)


async def start_recorded(c: Call, tmp_path: Path) -> tuple[Recorder, Any]:
    rec = Recorder(RecordsConfig(path=str(tmp_path / "calls.db")), agent="conversation",
                   metrics=c.metrics, clock=c.clock)
    assert rec.writer.open()
    rec.writer.start()
    handler = rec.wrap(c.leg.info, c.conv)  # as Switchboard.handler_for does
    await c.engines.start()
    await handler.on_start(c.leg)
    await settle()
    await c.until_listening()
    await c.feed(silence(0.6))
    return rec, handler


async def end_and_read(c: Call, rec: Recorder, handler: Any) -> dict[str, Any]:
    rec.tick()
    await handler.on_end("remote_bye")
    assert await asyncio.to_thread(rec.writer.flush, 10)
    rec.writer.close()
    record = SqliteStore(Path(rec.config.path), readonly=True).get_call(c.leg.info.call_id)
    assert record is not None
    return record


@pytest.mark.parametrize("stage", ["asr", "tts"])
async def test_an_engine_raising_is_an_apology_and_both_turns_are_recorded(
        stage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    asr = ScriptedAsr(RuntimeError("whisper broke") if stage == "asr" else "First question",
                      "Second question")
    llm = ScriptedLlm(*([] if stage == "asr" else [["Fine, thanks."]]), ["Second answer."])
    tts = ScriptedTts()
    if stage == "tts":
        tts.fail_on = "Fine"
    c = Call(asr, llm, tts)
    rec, handler = await start_recorded(c, tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.turns"):
        await c.say(0.8)
        await c.until_listening()
    assert c.leg.kinds()[-1] == "apology"
    await c.say(0.8)  # the call goes on
    await c.until_listening()
    assert c.leg.kinds()[-1] == "answer" and not c.leg.hangups
    record = await end_and_read(c, rec, handler)

    assert c.errors(stage, "RuntimeError") == 1
    assert c.value("switchboard_phrases_played_total", phrase="apology") == 1
    logged = [r for r in caplog.records if r.getMessage().startswith(f"{stage} failed")]
    assert logged and getattr(logged[0], "call_id", None) == c.leg.info.call_id
    first, second = record["turns"]
    assert first["outcome"] == "error" and first["error"].startswith(f"{stage}: RuntimeError")
    assert (second["outcome"], second["answer"]) == ("answered", "Second answer.")
    assert record["errors"] == 1 and record["turn_count"] == 2
    assert [e["phrase"] for e in record["events"] if e["event"] == "say"] == [
        "greeting", "apology"]


async def play_until(c: Call, done: Any, limit_s: float = 20.0) -> None:
    """Frames of silence, with real time between them for the worker thread's results,
    until done() (bounded by limit_s of frames)."""
    for _ in range(round(limit_s / 0.02)):
        if done():
            return
        await c.feed(silence(0.02))
        await asyncio.sleep(0.002)
    raise AssertionError(f"not done after {limit_s} s of call: {c.leg.kinds()}")


async def test_a_full_model_queue_says_please_hold_then_answers(tmp_path: Path) -> None:
    c = Call(ScriptedAsr("Hello"), ScriptedLlm(["Hi there, how can I help?"]))
    # The real worker: one thread, no room to wait. A long job holds the thread.
    worker = ModelWorker("llm", threads=1, max_queue=0, metrics=c.metrics, clock=c.clock)
    c.engines.llm_worker = worker
    rec, handler = await start_recorded(c, tmp_path)
    busy = threading.Event()
    blocker = asyncio.ensure_future(worker.submit(busy.wait))
    try:
        await play_until(c, lambda: worker.busy == 1)
        await c.feed(voice(0.8) + silence(0.6))
        await play_until(c, lambda: "please_hold" in c.leg.kinds())
        busy.set()  # the other call's job ends while "please hold" plays
        await play_until(c, lambda: "answer" in c.leg.kinds())
        await c.until_listening()
        assert c.leg.kinds()[-2:] == ["please_hold", "answer"]
        record = await end_and_read(c, rec, handler)
    finally:
        busy.set()
        await blocker
        await worker.aclose()
    assert c.value("switchboard_queue_rejected_total", engine="llm") == 1
    assert c.errors("llm", "QueueFull") == 1
    assert c.value("switchboard_phrases_played_total", phrase="please_hold") == 1
    (turn,) = record["turns"]
    assert (turn["outcome"], turn["answer"]) == ("answered", "Hi there, how can I help?")
    assert [e["phrase"] for e in record["events"] if e["event"] == "say"] == [
        "greeting", "please_hold"]
