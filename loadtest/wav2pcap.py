"""`python -m loadtest.wav2pcap in.wav out.pcap`: any WAV as the RTP capture SIPp replays.

    python -m loadtest.wav2pcap question.wav speech.pcap                # PCMU, as is
    python -m loadtest.wav2pcap question.wav speech.pcap --codec PCMA --lead 4 --tail 1

The WAV (8/16/24/32-bit integer PCM, any rate, mono or stereo: stereo is averaged) goes
through the project's own media path: media.resample to 8 kHz, media.g711 to μ-law or
A-law, media.rtp packets of 20 ms, written by loadtest.pcap with 20 ms between packets.
SIPp's `play_pcap_audio` sends the payloads with that timing (loadtest/sipp/uac_pcmu.xml).
`pcap_to_pcm` reads such a capture back to 8 kHz PCM (the tests compare it to the WAV).
"""

from __future__ import annotations

import argparse
import sys
import wave
from pathlib import Path

import numpy as np

from loadtest.pcap import PcapError, pcm_to_rtp, read_pcap, udp_payload, write_rtp_pcap
from media.g711 import alaw_decode, ulaw_decode
from media.resample import ResampleError, StreamResampler
from media.rtp import RtpError, RtpPacket

__all__ = ["WavError", "pcap_to_pcm", "read_wav_8k", "wav_to_pcap"]

RATE = 8000
MAX_SECONDS = 3600.0  # one hour of audio is 180 000 packets: plenty for any scenario


class WavError(ValueError):
    """A WAV this tool cannot read (compressed, empty, too long)."""


def _to_int16(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(raw, "<i2")
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        return (b[:, 2].astype(np.int8).astype(np.int16) << 8 | b[:, 1]).astype(np.int16)
    if width == 4:
        return (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
    raise WavError(f"{width * 8}-bit samples are not supported")


def read_wav_8k(path: str | Path) -> np.ndarray:
    """The WAV as 8 kHz mono int16 (averaged channels, resampled with media.resample)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.getnframes()
            if frames / max(rate, 1) > MAX_SECONDS:
                raise WavError(f"{path}: longer than {MAX_SECONDS:.0f} s")
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise WavError(f"{path}: not a PCM WAV ({e})") from None
    pcm = _to_int16(raw[: len(raw) // (width * channels) * width * channels], width)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    if not len(pcm):
        raise WavError(f"{path}: no audio")
    try:
        resampler = StreamResampler(rate, RATE)
    except ResampleError as e:
        raise WavError(f"{path}: {e}") from None
    out = resampler.process(pcm.astype("<i2").tobytes()) + resampler.flush()
    return np.frombuffer(out, "<i2").copy()


def wav_to_pcap(wav: str | Path, pcap: str | Path, *, codec: str = "PCMU",
                lead_s: float = 0.0, tail_s: float = 0.0) -> dict[str, float]:
    """Write `wav` as 20 ms RTP (after `lead_s` of silence, before `tail_s` more) to a
    pcap SIPp can play; returns packets, seconds and where the speech sits in it."""
    if not (0 <= lead_s <= MAX_SECONDS and 0 <= tail_s <= MAX_SECONDS):
        raise WavError("lead and tail must be 0..3600 s")
    speech = read_wav_8k(wav)
    pcm = np.concatenate([np.zeros(round(lead_s * RATE), np.int16), speech,
                          np.zeros(round(tail_s * RATE), np.int16)])
    count = write_rtp_pcap(pcap, pcm_to_rtp(pcm.astype("<i2").tobytes(), codec))
    return {"packets": count, "seconds": count * 0.02, "speech_start_s": lead_s,
            "speech_end_s": lead_s + len(speech) / RATE}


def pcap_to_pcm(pcap: str | Path) -> np.ndarray:
    """The G.711 RTP payloads of a capture, in capture order, as 8 kHz int16."""
    packets = []
    for record in read_pcap(Path(pcap).read_bytes()):
        try:
            packets.append(RtpPacket.parse(udp_payload(record.frame)))
        except RtpError as e:
            raise PcapError(f"{pcap}: not RTP ({e})") from None
    decode = {0: ulaw_decode, 8: alaw_decode}
    out = bytearray()
    for p in packets:
        if p.payload_type not in decode:
            raise PcapError(f"{pcap}: payload type {p.payload_type} is not G.711")
        out += decode[p.payload_type](p.payload)
    return np.frombuffer(bytes(out), "<i2").copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.wav2pcap",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("wav", type=Path)
    parser.add_argument("pcap", type=Path)
    parser.add_argument("--codec", choices=["PCMU", "PCMA"], default="PCMU")
    parser.add_argument("--lead", type=float, default=0.0, help="silence before, seconds")
    parser.add_argument("--tail", type=float, default=0.0, help="silence after, seconds")
    args = parser.parse_args(argv)
    try:
        info = wav_to_pcap(args.wav, args.pcap, codec=args.codec, lead_s=args.lead,
                           tail_s=args.tail)
    except (WavError, PcapError, OSError) as e:
        print(f"wav2pcap: {e}", file=sys.stderr)
        return 2
    print(f"{args.pcap}: {info['packets']} packets, {info['seconds']:.2f} s of {args.codec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
