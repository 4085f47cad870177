"""`switchboard call <sip-uri>`: place one call, speak a WAV into it, record the reply.

  switchboard call sip:echo@127.0.0.1:5060 --play in.wav --record out.wav [--seconds N]
                   [--dtmf D] [--codec PCMU|PCMA|opus] [--tail T] [--user U --password P]

A minimal SIP user agent on an ephemeral port (the same sip/ stack the server runs) calls
the URI; the WAV is resampled to 16 kHz and fed to the call leg's send_audio as the
caller's voice, a few frames ahead of the shared 20 ms pacer, like a live microphone;
what comes back is written to a 16 kHz WAV. The call is hung up when the WAV has been
played plus a tail (or after --seconds), or when the far end hangs up.

One JSON object goes to stdout. Timings are measured on the audio with an energy
threshold, so they work against any agent: setup_time_s (INVITE sent -> 200 received),
reply_latency_s (end of our speech -> first reply audio after it), first_reply_s (start
of our speech -> first audio back), reply_end_lag_s (end of our speech -> end of the last
reply audio; the echo delay for an echo agent), and the RTP packet counts, loss and
jitter. The exit status is 0 for an answered call, 1 for a failed one.

OutboundCalls is the same dialing on the server side: `switchboard serve` registers with
the configured trunk and places the calls asked for over HTTP (POST /calls).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import wave
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from media.clock import Clock, MonotonicClock
from media.pacer import Pacer
from media.resample import FrameChunker, StreamResampler
from media.vad import rms_dbfs
from pipeline.echo import EchoHandler
from pipeline.leg import FRAME_BYTES, FRAME_MS, PIPELINE_RATE, CallHandler, CallInfo, CallLeg
from pipeline.metrics import Metrics
from sip.call import SipCall
from sip.endpoint import CallRefused, EndpointSettings
from sip.outbound import (
    DestinationError,
    Dialer,
    DialError,
    OutboundCall,
    TargetNotAllowed,
    parse_destination,
)
from sip.refer import ReferError, TransferNotAllowed
from sip.registration import Registration, TrunkAccount
from sip.server import SipServer, SipServerConfig
from sip.transport import Target
from switchboard.config import SipConfig, TrunkConfig
from switchboard.http import ApiError

__all__ = ["CallClient", "DialOptions", "OutboundCalls", "add_call_command", "load_wav",
           "place_call"]

log = logging.getLogger("switchboard.dial")
FRAME_S = FRAME_MS / 1000
LEAD_S = 0.06  # audio kept queued ahead of the pacer: three frames


class WavError(ValueError):
    """A WAV file we cannot play (not 16-bit PCM, unreadable)."""


def load_wav(path: Path) -> list[bytes]:
    """A 16-bit PCM WAV (any rate, mono or stereo) as 20 ms frames of 16 kHz mono."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise WavError(f"{path}: cannot read the WAV: {exc}") from None
    if width != 2:
        raise WavError(f"{path}: {8 * width}-bit samples; 16-bit PCM is needed")
    if channels > 1:  # mix down: average the channels
        import numpy as np

        samples = np.frombuffer(data, dtype="<i2").reshape(-1, channels).mean(axis=1)
        data = samples.round().astype("<i2").tobytes()
    resampler = StreamResampler(rate, PIPELINE_RATE)
    pcm = resampler.process(data) + resampler.flush()
    chunker = FrameChunker(FRAME_BYTES)
    frames = chunker.push(pcm)
    tail = chunker.flush()
    if tail:
        frames.append(tail + bytes(FRAME_BYTES - len(tail)))
    return frames


def write_wav(path: Path, pcm: bytes, rate: int = PIPELINE_RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def _voiced(frames: list[bytes], threshold: float) -> tuple[int, int] | None:
    """Index of the first and last frame above the threshold."""
    loud = [i for i, f in enumerate(frames) if rms_dbfs(f) > threshold]
    return (loud[0], loud[-1]) if loud else None


class CallClient:
    """The CallHandler of `switchboard call`: plays frames, records, times the reply."""

    def __init__(self, frames: list[bytes], clock: Clock, *, threshold_dbfs: float = -40.0,
                 dtmf: str = "") -> None:
        self.frames = frames
        self.clock = clock
        self.threshold = threshold_dbfs
        self.dtmf = dtmf
        voiced = _voiced(frames, threshold_dbfs)
        self._speech = voiced
        self.leg: CallLeg | None = None
        self.started_at: float | None = None
        self.marks: dict[str, float] = {}  # mark -> when its audio had been sent
        self.recording = bytearray()
        self.first_audio_at: float | None = None  # first frame back above the threshold
        self.reply_at: float | None = None  # first one at or after our speech ended
        self.last_audio_at: float | None = None
        self.digits = ""
        self.dtmf_error: str | None = None
        self.ended: str | None = None
        self._next = 0
        self._done = asyncio.Event()

    @property
    def play_seconds(self) -> float:
        return len(self.frames) * FRAME_S

    async def on_start(self, leg: CallLeg) -> None:
        self.leg = leg
        self.started_at = self.clock.now()
        if not self.frames:
            self._send_dtmf()

    def on_frame(self, pcm: bytes) -> None:
        now = self.clock.now()
        self._feed()
        self.recording += pcm
        if rms_dbfs(pcm) > self.threshold:
            if self.first_audio_at is None:
                self.first_audio_at = now
            if self.reply_at is None and "speech_end" in self.marks:
                self.reply_at = now
            self.last_audio_at = now

    def _feed(self) -> None:
        """Top the leg's queue up to LEAD_S: the caller speaks in real time."""
        leg = self.leg
        if leg is None:
            return
        while self._next < len(self.frames) and leg.queued_seconds() < LEAD_S:
            i = self._next
            self._next += 1
            if self._speech is not None and i == self._speech[0]:
                leg.send_audio(b"", PIPELINE_RATE, "speech_start")
            mark = None
            if self._speech is not None and i == self._speech[1]:
                mark = "speech_end"
            elif i == len(self.frames) - 1:
                mark = "play_end"
            leg.send_audio(self.frames[i], PIPELINE_RATE, mark)
            if mark == "speech_end" and i == len(self.frames) - 1:
                leg.send_audio(b"", PIPELINE_RATE, "play_end")

    def on_mark(self, mark: str, played: bool) -> None:
        self.marks.setdefault(mark, self.clock.now())
        if mark == "speech_end" or (mark == "play_end" and self._speech is None):
            self._send_dtmf()

    def _send_dtmf(self) -> None:
        if self.dtmf and self.leg is not None:
            try:
                self.leg.send_dtmf(self.dtmf)
            except ValueError as exc:  # no telephone-event negotiated, or a bad digit
                self.dtmf_error = str(exc)

    def on_dtmf(self, digit: str) -> None:
        self.digits += digit

    async def on_end(self, reason: str) -> None:
        self.ended = reason
        self._done.set()

    async def wait_ended(self) -> None:
        await self._done.wait()

    def timings(self) -> dict[str, float | None]:
        def gap(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 3)

        start, end = self.marks.get("speech_start"), self.marks.get("speech_end")
        return {
            "reply_latency_s": gap(end, self.reply_at),
            "first_reply_s": gap(start, self.first_audio_at),
            "reply_end_lag_s": gap(end, self.last_audio_at) if self.reply_at is not None
            else None,
            "speech_s": gap(start, end),
        }


@dataclass(frozen=True, slots=True)
class DialOptions:
    uri: str
    play: Path | None = None
    record: Path | None = None
    seconds: float | None = None  # hang up this long after the answer
    tail: float = 3.0  # without --seconds: hang up this long after the WAV has played
    dtmf: str = ""
    codec: str | None = None
    ring_timeout: float = 30.0
    threshold_dbfs: float = -40.0
    username: str | None = None
    password: str = ""
    listen: str = "0.0.0.0"
    rtp_ports: tuple[int, int] = (40000, 49998)


def _refuse(info: CallInfo) -> CallClient:
    raise CallRefused(486, "Busy Here", "busy")  # this UA only calls out


async def place_call(opts: DialOptions, clock: Clock | None = None) -> dict[str, object]:
    """Run one call; the result object that `switchboard call` prints."""
    clock = clock or MonotonicClock()
    frames = load_wav(opts.play) if opts.play is not None else []
    client = CallClient(frames, clock, threshold_dbfs=opts.threshold_dbfs, dtmf=opts.dtmf)
    result: dict[str, object] = {"to": opts.uri, "status": "failed"}
    trunk = None
    if opts.username:  # credentials for the host we call: a challenge gets answered
        dest = parse_destination(opts.uri, None)
        trunk = TrunkAccount(dest.target.host, dest.target.port, opts.username, opts.password,
                             transport=dest.target.transport)  # type: ignore[arg-type]
    metrics = Metrics()
    pacer = Pacer(clock)
    pacer.start()
    codecs = (opts.codec,) if opts.codec else ("PCMU", "PCMA", "opus")
    settings = EndpointSettings(codecs=codecs, max_calls=1, trusted_networks=(),
                                user_agent="switchboard-call")
    server = SipServer(
        SipServerConfig(listen=opts.listen, port=0, rtp_port_min=opts.rtp_ports[0],
                        rtp_port_max=opts.rtp_ports[1], endpoint=settings),
        handler_factory=_refuse, clock=clock, metrics=metrics, pacer=pacer)
    try:
        await server.start()
        transport = server.transport
        dialer = Dialer(server.endpoint, trunk=trunk, ring_timeout=opts.ring_timeout,
                        local_address=lambda t: (transport.local_host(t.host), transport.port))
        attempt = dialer.prepare(opts.uri, client, codecs=codecs)
        result["call_id"] = attempt.call_id
        try:
            call = await dialer.run(attempt)
        except DialError as exc:
            result.update(sip_status=exc.status, error=str(exc), setup_time_s=None)
            return result
        result.update(sip_status=attempt.status, codec=call.media.params.codec,
                      setup_time_s=round(attempt.setup_time or 0.0, 3))
        answered = clock.now()
        hold = opts.seconds if opts.seconds is not None else client.play_seconds + opts.tail
        waits = [asyncio.ensure_future(client.wait_ended()),
                 asyncio.ensure_future(call.wait_closed()),
                 asyncio.ensure_future(clock.sleep_until(answered + hold))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        remote = call.reason == "remote_bye"
        await call.hangup()
        result.update(status="completed", hangup="remote" if remote else "local",
                      end_reason=call.reason, duration_s=round(clock.now() - answered, 3))
        result.update(client.timings())
        stats = call.media.stats  # type: ignore[attr-defined]
        expected = stats.packets_in + stats.lost
        result.update(
            packets_sent=stats.packets_out, packets_received=stats.packets_in,
            packets_lost=stats.lost, loss=round(stats.lost / expected, 4) if expected else 0.0,
            jitter_ms=round(stats.jitter_seconds * 1000, 2), late=stats.late,
            concealed=stats.concealed,
            rtt_ms=round(stats.rtt_seconds * 1000, 2) if stats.rtt_seconds is not None else None,
            dtmf_sent=opts.dtmf if opts.dtmf and client.dtmf_error is None else "",
            dtmf_received=client.digits,
            recorded_s=round(len(client.recording) / (2 * PIPELINE_RATE), 3),
        )
        if client.dtmf_error:
            result["dtmf_error"] = client.dtmf_error
        if opts.record is not None:
            write_wav(opts.record, bytes(client.recording))
        return result
    finally:
        await server.stop()
        await pacer.stop()


# -- the server side: dialing out from `switchboard serve` -----------------------------------


class OutboundCalls:
    """What `switchboard serve` needs to call out: the trunk registration, the Dialer, and
    the /calls API (switchboard.http.CallsApi). start(sip) once the SIP server runs;
    stop() before it stops (the unregister and the CANCELs still go out)."""

    def __init__(self, config: SipConfig, *, handler_for: Callable[[CallInfo], CallHandler],
                 default_agent: str, clock: Clock, metrics: Metrics, keep: int = 1000,
                 agent_names: Callable[[], list[str]] | None = None) -> None:
        self.config = config
        self.handler_for = handler_for
        self.default_agent = default_agent
        self.agent_names = agent_names  # the dialplan's agents: any may be asked for
        self.clock = clock
        self.metrics = metrics
        self.keep = keep
        self.trunk = _trunk_account(config.trunk) if config.trunk is not None else None
        self.dialer: Dialer | None = None
        self.registration: Registration | None = None
        self.attempts: OrderedDict[str, OutboundCall] = OrderedDict()  # recent, for GET

    async def start(self, sip: SipServer) -> None:
        transport = sip.transport

        def local_address(target: Target) -> tuple[str, int]:
            return transport.local_host(target.host), transport.port

        self.dialer = Dialer(sip.endpoint, trunk=self.trunk, local_address=local_address)
        trunk = self.config.trunk
        if self.trunk is not None and trunk is not None and trunk.registration:
            self.registration = Registration(
                self.trunk, transactions=sip.endpoint.transactions, local_address=local_address,
                clock=self.clock, metrics=self.metrics, user_agent=self.config.user_agent)
            self.registration.start()

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()  # REGISTER with Expires: 0
        if self.dialer is not None:
            await self.dialer.close()  # CANCEL what still rings

    def readiness(self) -> dict[str, object]:
        if self.registration is None:
            return {}
        return {"trunk_registration": self.registration.state.value}

    def _named(self, agent: str | None) -> bool:
        return (agent is not None and self.agent_names is not None
                and agent in self.agent_names())

    def _check_agent(self, agent: str | None) -> None:
        if self._named(agent):
            return
        if agent is not None and agent not in ("echo", "conversation"):
            known = ("'echo' or 'conversation'" if self.agent_names is None
                     else "one of " + ", ".join(self.agent_names()))
            raise ApiError(400, f"unknown agent {agent!r}; use {known}")
        if agent not in (None, "echo", self.default_agent):
            raise ApiError(400, f"agent {agent!r} is not loaded in this process "
                                f"(it runs {self.default_agent!r})")

    def _handler(self, info: CallInfo, agent: str | None) -> CallHandler:
        named = self._named(agent)
        if agent == "echo" and self.default_agent != "echo" and not named:
            return EchoHandler()
        try:
            return self.handler_for(dataclasses.replace(info, agent=agent) if named else info)
        except CallRefused as e:
            if e.metric == "no_route":
                raise ApiError(400, "the dialplan has no route or default for this call: name "
                                    "an agent") from None
            raise ApiError(503, f"the agent cannot take a call now: {e.reason}") from None

    async def place_call(self, to: str, agent: str | None) -> dict[str, object]:
        dialer = self.dialer
        if dialer is None:
            raise ApiError(503, "SIP is not running")
        self._check_agent(agent)  # bad input is a 400 even at the call limit
        try:
            attempt = dialer.prepare(to)
        except TargetNotAllowed as e:
            raise ApiError(403, str(e)) from None
        except DestinationError as e:
            raise ApiError(400, str(e)) from None
        ep = dialer.endpoint
        if ep.load + len(dialer.pending) >= ep.settings.max_calls or not ep.accepting:
            raise ApiError(503, f"at the call limit ({ep.settings.max_calls} calls)"
                           if ep.accepting else "shutting down")
        attempt.handler = self._handler(attempt.info, agent)
        self.attempts[attempt.call_id] = attempt
        while len(self.attempts) > self.keep:
            self.attempts.popitem(last=False)
        dialer.start(attempt)
        return {"call_id": attempt.call_id, "to": str(attempt.dest.uri), "state": "calling"}

    def call_status(self, call_id: str) -> dict[str, object]:
        attempt = self.attempts.get(call_id)
        if attempt is None:
            raise ApiError(404, f"no outbound call {call_id!r}")
        call = attempt.call
        return {
            "call_id": call_id, "to": str(attempt.dest.uri),
            "state": "ended" if call is not None and not call.active else attempt.state,
            "status": attempt.status, "error": str(attempt.error) if attempt.error else None,
            "setup_time_s": round(attempt.setup_time, 3) if attempt.setup_time else None,
            "end_reason": call.reason if call is not None else None,
        }

    async def transfer_call(self, call_id: str, target: str) -> dict[str, object]:
        call = self._find(call_id)
        if not call.active:
            raise ApiError(409, f"call {call_id!r} has already ended ({call.reason})")
        try:
            await call.transfer(target)
        except TransferNotAllowed as e:
            raise ApiError(403, str(e)) from None
        except ReferError as e:
            raise ApiError(502, str(e), sip_status=e.status) from None
        return {"call_id": call_id, "transferred_to": target}

    def _find(self, call_id: str) -> SipCall:
        attempt = self.attempts.get(call_id)
        if attempt is not None and attempt.call is not None:
            return attempt.call
        if self.dialer is not None:  # an inbound call can be transferred too
            for call in self.dialer.endpoint.calls.values():
                if call.info.call_id == call_id:
                    return call
        raise ApiError(404, f"no answered call {call_id!r}")


def _trunk_account(trunk: TrunkConfig) -> TrunkAccount:
    return TrunkAccount.parse(trunk.registrar, username=trunk.username, password=trunk.password,
                              realm=trunk.realm, domain=trunk.domain, expires=trunk.expires,
                              transport=trunk.transport)


def add_call_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `call` subcommand, for switchboard.cli."""
    p = sub.add_parser("call", help="place one call: play a WAV, record the reply, print timings")
    p.add_argument("uri", help="sip:user@host[:port][;transport=tcp]")
    p.add_argument("--play", type=Path, help="16-bit PCM WAV to speak into the call")
    p.add_argument("--record", type=Path, help="write what comes back here (16 kHz WAV)")
    p.add_argument("--seconds", type=float, help="hang up this long after the answer")
    p.add_argument("--tail", type=float, default=3.0,
                   help="without --seconds: keep listening this long after the WAV (3)")
    p.add_argument("--dtmf", default="", help="RFC 4733 digits to send after the speech")
    p.add_argument("--codec", choices=["PCMU", "PCMA", "opus"], help="offer only this codec")
    p.add_argument("--timeout", type=float, default=30.0, help="ring timeout in seconds (30)")
    p.add_argument("--threshold-dbfs", type=float, default=-40.0,
                   help="level above which received audio counts as a reply (-40)")
    p.add_argument("--user", help="digest username, if the far end challenges")
    p.add_argument("--password", default="", help="digest password")
    p.add_argument("--listen", default="0.0.0.0", help="local address to bind (0.0.0.0)")
    p.add_argument("--verbose", "-v", action="store_true", help="log SIP activity to stderr")
    p.set_defaults(func=run_call_command)


def run_call_command(args: argparse.Namespace) -> int:
    from switchboard.logs import setup_logging

    setup_logging("DEBUG" if args.verbose else "WARNING")
    opts = DialOptions(
        uri=args.uri, play=args.play, record=args.record, seconds=args.seconds, tail=args.tail,
        dtmf=args.dtmf, codec=args.codec, ring_timeout=args.timeout,
        threshold_dbfs=args.threshold_dbfs, username=args.user, password=args.password,
        listen=args.listen,
    )
    try:
        result = asyncio.run(place_call(opts))
    except (WavError, DialError) as exc:  # bad input, before any call was placed
        print(json.dumps({"to": args.uri, "status": "failed", "error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0 if result.get("status") == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard")
    add_call_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
