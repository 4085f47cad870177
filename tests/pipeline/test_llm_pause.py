"""The LLM waits while the answer's first chunk is synthesized (they share the CPU on a
small box); it goes on once that chunk's first audio is out, or after the limit."""

from __future__ import annotations

from tests.pipeline.test_conversation import Call, ScriptedAsr, ScriptedLlm, ScriptedTts

TOKENS = ["We", " open", " at", " nine,", " on", " Saturday", " morning.", " See", " you",
          " then!"]


class LoggingTts(ScriptedTts):
    """Notes in the LLM worker's log when each chunk's synthesis starts."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def synthesize(self, text: str):  # type: ignore[no-untyped-def]
        self.log.append(f"tts:{text}")
        yield from super().synthesize(text)


async def test_the_llm_pauses_after_the_first_chunk_until_its_audio() -> None:
    c = Call(ScriptedAsr("When do you open on Saturday?"), ScriptedLlm(TOKENS))
    log = c.workers["llm"].log
    c.tts = c.engines.tts = LoggingTts(log)
    await c.start()
    log.clear()
    await c.say(1.0, pause=0.6)
    await c.until_listening()
    # Tokens up to the first clause, then the pause; the first chunk's synthesis runs
    # while no token is asked for; then the LLM resumes and the rest follows.
    first_tts = log.index("tts:We open at nine,")
    # (the chunker cuts "nine," once it sees the character after the comma: 5 tokens)
    assert log[:6] == ["item"] * 5 + ["pause"]
    assert log.index("resume") > first_tts
    assert "item" not in log[log.index("pause"):first_tts]
    assert log.count("item") == len(TOKENS)
    assert c.history()[-1]["content"] == "We open at nine, on Saturday morning. See you then!"


async def test_no_pause_when_the_limit_is_zero() -> None:
    c = Call(ScriptedAsr("When do you open?"), ScriptedLlm(TOKENS),
             llm_pause_for_first_audio_s=0)
    await c.start()
    await c.say(1.0, pause=0.6)
    await c.until_listening()
    assert "pause" not in c.workers["llm"].log
    assert c.history()[-1]["content"] == "We open at nine, on Saturday morning. See you then!"


async def test_when_others_wait_for_the_llm_no_pause_and_one_sentence() -> None:
    c = Call(ScriptedAsr("When do you open?"), ScriptedLlm(TOKENS))
    await c.start()
    c.workers["llm"].depth = 2  # two other calls' jobs are queued
    await c.say(1.0, pause=0.6)
    await c.until_listening()
    assert "pause" not in c.workers["llm"].log
    assert c.history()[-1]["content"] == "We open at nine, on Saturday morning."
