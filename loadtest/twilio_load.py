"""A load generator for the Twilio Media Streams door: N concurrent streams, each one a
caller asking a recorded question at real time, measured in the audio it gets back.

Each stream sends what Twilio sends (the documented `connected`, `start`, then a
`media` message of 20 ms μ-law every 20 ms, silence included, and `stop`), echoes every
`mark` the server sends as it arrives (Twilio does once the audio before it has played;
the server sends audio at most streams.twilio max_lead_ms ahead of real time), and:
- `lead_s` of silence (the greeting plays), the question, then silence while it listens;
- response latency: end of the question -> the first loud reply frame received
  (loadtest.audio_marks; with the echo agent: start of the question -> its echo);
- barge-in (with an interruption clip): at least `bargein_after_s` after the reply
  started, while reply audio is arriving, it says the interruption over it, and
  measures onset -> `clear` received and onset -> the reply audio stopping;
- the call lasts until `listen_s` after the question (and 3 s after the interruption).

Streams start at `rate` per second, at most `concurrency` at once, `calls` in all. Every
loop is bounded: a stream sends at most its planned frames, and the whole run is
cancelled after `time_limit_s`. A progress bar goes to stderr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
import numpy as np

from loadtest.audio_marks import LOUD_DBFS, BargeinTracker, ReplyTracker, frame_dbfs
from media.g711 import ulaw_decode, ulaw_encode

__all__ = ["StreamResult", "TwilioScenario", "run_streams"]

FRAME_S = 0.02
FRAME_SAMPLES = 160
SILENCE = base64.b64encode(b"\xff" * FRAME_SAMPLES).decode()
BARGEIN_TAIL_S = 3.0


@dataclass(frozen=True, slots=True)
class TwilioScenario:
    url: str  # ws://host:port/twilio/stream
    calls: int
    concurrency: int
    rate: float  # streams started per second
    questions: list[np.ndarray]  # 8 kHz int16 clips, call i asks questions[i % n]
    interruption: np.ndarray | None = None  # said over the reply, when given
    lead_s: float = 4.0
    listen_s: float = 12.0
    bargein_after_s: float = 1.0
    mode: str = "answer"  # "answer" | "echo": what the latency is measured from
    time_limit_s: float = 600.0


@dataclass(slots=True)
class StreamResult:
    index: int
    question: int
    started: float | None = None  # seconds after the run started
    ended: float | None = None
    status: str = "not_started"  # completed | failed
    reason: str | None = None
    frames_sent: int = 0
    frames_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    reply: ReplyTracker = field(default_factory=ReplyTracker)
    bargein: BargeinTracker | None = None

    def to_dict(self) -> dict[str, Any]:
        lat = self.reply.latency
        out: dict[str, Any] = {
            "index": self.index, "question": self.question, "status": self.status,
            "reason": self.reason, "started_s": _r(self.started), "ended_s": _r(self.ended),
            "frames_sent": self.frames_sent, "frames_received": self.frames_received,
            "marks_echoed": self.marks_echoed, "clears": self.clears,
            "question_s": [_r(x) for x in self.reply.question] if self.reply.question else None,
            "reply_onset_s": _r(self.reply.onset),
            "latency_ms": None if lat is None else round(lat * 1000, 1),
        }
        if self.bargein is not None:
            b = self.bargein
            out["bargein"] = {
                "sent_s": _r(b.sent_at), "talking_at_onset": b.talking_at_onset,
                "clear_ms": _ms(b.clear_latency), "stop_ms": _ms(b.stop_latency),
            }
        return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def _frames(pcm: np.ndarray) -> list[tuple[str, bool]]:
    """(base64 μ-law, loud?) per 20 ms of 8 kHz int16, the last frame padded."""
    pcm = np.concatenate([pcm.astype("<i2"), np.zeros(-len(pcm) % FRAME_SAMPLES, "<i2")])
    out = []
    for i in range(0, len(pcm), FRAME_SAMPLES):
        chunk = pcm[i:i + FRAME_SAMPLES]
        out.append((base64.b64encode(ulaw_encode(chunk.tobytes())).decode(),
                    frame_dbfs(chunk) > LOUD_DBFS))
    return out


class _Call:
    """One stream: the sender paces the frames, the reader tracks what comes back."""

    def __init__(self, scenario: TwilioScenario, result: StreamResult, t0: float,
                 question: list[tuple[str, bool]],
                 interruption: list[tuple[str, bool]] | None) -> None:
        self.s, self.result, self.t0 = scenario, result, t0
        self.question, self.interruption = question, interruption
        self.sid = f"MZ{result.index:032x}"
        self.call_sid = f"CA{result.index:032x}"
        self.seq = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.closed_by_server: str | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        self.seq += 1
        await self.ws.send_str(json.dumps({**message, "sequenceNumber": str(self.seq)}))

    async def run(self, session: aiohttp.ClientSession) -> None:
        r = self.result
        r.started = self.now()
        try:
            self.ws = await session.ws_connect(self.s.url, max_msg_size=1 << 20, heartbeat=None)
        except aiohttp.WSServerHandshakeError as e:
            r.status, r.reason = "failed", f"refused: HTTP {e.status}"
            return
        except (aiohttp.ClientError, OSError) as e:
            r.status, r.reason = "failed", f"connect: {type(e).__name__}"
            return
        reader = asyncio.create_task(self.read())
        try:
            await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call",
                                               "version": "1.0.0"}))
            await self.send({"event": "start", "streamSid": self.sid, "start": {
                "accountSid": "AC" + "0" * 32, "streamSid": self.sid, "callSid": self.call_sid,
                "tracks": ["inbound"], "customParameters": {"loadtest": str(r.index)},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                "channels": 1}}})
            await self.talk()
            if self.closed_by_server is None:
                await self.send({"event": "stop", "streamSid": self.sid,
                                 "stop": {"accountSid": "AC" + "0" * 32,
                                          "callSid": self.call_sid}})
                r.status = "completed"
        except (aiohttp.ClientError, ConnectionError) as e:
            r.status, r.reason = "failed", f"send: {type(e).__name__}"
        finally:
            await self.ws.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.closed_by_server is not None and r.status != "completed":
                r.status, r.reason = "failed", self.closed_by_server
            if r.bargein is not None:
                r.bargein.finish()
            r.ended = self.now()

    async def talk(self) -> None:
        """Send every planned frame on time; at most the planned number of frames."""
        s, r = self.s, self.result
        lead = round(s.lead_s / FRAME_S)
        plan = [(SILENCE, False)] * lead + self.question
        voiced = [i for i, (_, loud) in enumerate(plan) if loud] or [lead]
        listen = round(s.listen_s / FRAME_S)
        end = len(plan) + listen
        extra = len(self.interruption or []) + round(BARGEIN_TAIL_S / FRAME_S)
        limit = end + extra + 1  # the interruption starts before `end`: never past this
        start = time.monotonic()
        interrupt_from: int | None = None
        k = 0
        while k < min(end, limit) and self.closed_by_server is None:
            due = start + k * FRAME_S
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            if k < len(plan):
                payload, _ = plan[k]
            elif interrupt_from is not None and k - interrupt_from < len(self.interruption or []):
                payload, loud = self.interruption[k - interrupt_from]  # type: ignore[index]
                if loud and r.bargein is not None and r.bargein.sent_at is None:
                    r.bargein.interruption_sent(self.now())
            else:
                payload = SILENCE
            await self.send({"event": "media", "streamSid": self.sid, "media": {
                "track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20),
                "payload": payload}})
            r.frames_sent += 1
            if k == voiced[0]:
                r.reply.question_started(self.now())
            if k == voiced[-1]:
                r.reply.question_ended(self.now())
            if (self.interruption and interrupt_from is None and r.reply.onset is not None
                    and k >= len(plan) and r.bargein is not None
                    and self.now() >= r.reply.onset + s.bargein_after_s
                    and r.bargein.talking(self.now())):
                interrupt_from = k + 1
                end = max(end, interrupt_from + extra)
            k += 1

    async def read(self) -> None:
        assert self.ws is not None
        r = self.result
        why = ""
        # Ends when the socket closes (run() cancels it after its stop); at most the
        # messages a stream can carry in the time limit: a frame and a mark per 20 ms.
        for _ in range(round(3 * self.s.time_limit_s / FRAME_S) + 1000):
            msg = await self.ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                why = f": {msg.extra}" if msg.type is aiohttp.WSMsgType.CLOSE and msg.extra \
                    else ""
                break
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                event = json.loads(msg.data)
                kind = event.get("event")
                if kind == "media":
                    pcm = ulaw_decode(base64.b64decode(event["media"]["payload"]))
                    t, loud = self.now(), frame_dbfs(pcm) > LOUD_DBFS
                    r.frames_received += 1
                    r.reply.frame(t, loud)
                    if r.bargein is not None:
                        r.bargein.frame(t, loud)
                elif kind == "mark":
                    await self.send({"event": "mark", "streamSid": self.sid,
                                     "mark": {"name": event["mark"]["name"]}})
                    r.marks_echoed += 1
                elif kind == "clear":
                    r.clears += 1
                    if r.bargein is not None:
                        r.bargein.clear(self.now())
            except (ValueError, KeyError, TypeError, binascii.Error):
                r.reason = "unreadable message from the server"
            except (aiohttp.ClientError, ConnectionError):
                break
        if r.status != "completed":
            self.closed_by_server = f"closed by the server ({self.ws.close_code}{why})"


class Progress:
    """`[#####-----] 3/10 done, 2 active, 0 failed, 12 s` on stderr, at most every 0.5 s;
    also the client's active-stream count over time, for the report."""

    def __init__(self, total: int, out: TextIO | None = None, width: int = 30) -> None:
        self.total, self.out, self.width = total, out or sys.stderr, width
        self.done = self.failed = self.active = 0
        self.timeline: list[dict[str, float]] = []

    def draw(self, t: float, final: bool = False) -> None:
        """Redraw in place on a terminal; elsewhere (a log) one line every 10 draws."""
        self.timeline.append({"t": round(t, 2), "active": self.active})
        tty = self.out.isatty()
        if not (tty or final or len(self.timeline) % 10 == 1):
            return
        filled = round(self.width * self.done / max(1, self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        self.out.write(("\r" if tty else "") + f"[{bar}] {self.done}/{self.total} done, "
                       f"{self.active} active, {self.failed} failed, {t:.0f} s"
                       + ("\n" if final or not tty else ""))
        self.out.flush()


async def run_streams(s: TwilioScenario, progress_out: TextIO | None = None
                      ) -> tuple[list[StreamResult], list[dict[str, float]]]:
    """Every stream of the scenario; (results in call order, client active timeline)."""
    if not s.questions:
        raise ValueError("no questions to ask")
    questions = [_frames(q) for q in s.questions]
    interruption = _frames(s.interruption) if s.interruption is not None else None
    results = [StreamResult(i, i % len(questions), reply=ReplyTracker(s.mode),
                            bargein=BargeinTracker() if interruption else None)
               for i in range(s.calls)]
    progress = Progress(s.calls, progress_out)
    gate = asyncio.Semaphore(s.concurrency)
    t0 = time.monotonic()

    async def one(r: StreamResult, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(r.index / s.rate)
        async with gate:
            progress.active += 1
            try:
                await _Call(s, r, t0, questions[r.question], interruption).run(session)
            finally:
                progress.active -= 1
                progress.done += 1
                progress.failed += r.status == "failed"

    async def ticker() -> None:
        for _ in range(int(s.time_limit_s / 0.5) + 1):
            progress.draw(time.monotonic() - t0)
            await asyncio.sleep(0.5)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tick = asyncio.create_task(ticker())
        tasks = [asyncio.create_task(one(r, session)) for r in results]
        _, pending = await asyncio.wait(tasks, timeout=s.time_limit_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
    for r in results:
        if r.status == "not_started" or (r.status != "failed" and r.ended is None):
            r.status, r.reason = "failed", "run time limit"
    progress.draw(time.monotonic() - t0, final=True)
    return results, progress.timeline
