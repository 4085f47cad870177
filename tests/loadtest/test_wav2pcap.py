"""loadtest.wav2pcap: any WAV as 20 ms G.711 RTP in a pcap, decoded back and compared
with the source audio (resampled independently), plus the packets' framing and timing."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from loadtest.pcap import read_pcap, udp_payload
from loadtest.wav2pcap import WavError, main, pcap_to_pcm, read_wav_8k, wav_to_pcap
from media.rtp import RtpPacket


def _signal(rate: int, seconds: float) -> np.ndarray:
    """A speech-like test signal: two gliding tones with a syllable envelope, -12 dBFS."""
    t = np.arange(round(rate * seconds)) / rate
    tone = np.sin(2 * np.pi * (220 + 80 * t) * t) + 0.5 * np.sin(2 * np.pi * 1250 * t)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
    return (tone * envelope * 0.25 * 32767 / 1.5).astype(np.int16)


def _write(path: Path, pcm: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def _snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    n = min(len(reference), len(test))
    ref, out = reference[:n].astype(np.float64), test[:n].astype(np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - out) ** 2), 1e-9))


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000])
def test_the_capture_decodes_back_to_the_source_audio(tmp_path, rate):
    source = _signal(rate, 1.5)
    wav = _write(tmp_path / "in.wav", source, rate)
    info = wav_to_pcap(wav, tmp_path / "out.pcap")
    decoded = pcap_to_pcm(tmp_path / "out.pcap")
    # An independent resampler (soxr in one go) as the reference for the 8 kHz audio.
    reference = soxr.resample(source.astype(np.float32), rate, 8000).round().astype(np.int16)
    assert abs(len(decoded) - len(reference)) < 160  # only the last frame is padded
    edge = 200  # the filters' start-up and tail differ; compare the steady middle
    # Against the same 8 kHz audio as the tool resamples it: only G.711 stands between.
    assert _snr_db(read_wav_8k(wav)[edge:-edge], decoded[edge:-edge - 160]) > 30
    # Against the independent resampler: the same sound, at most a sample or two later
    # (the streaming filter's lag, a fraction of a millisecond).
    ref = reference[edge:-edge].astype(np.float64)
    corr = {lag: float(np.dot(ref, decoded[edge + lag:len(reference) - edge + lag])
                       / np.linalg.norm(ref)
                       / np.linalg.norm(decoded[edge + lag:len(reference) - edge + lag]))
            for lag in range(6)}
    assert max(corr.values()) > 0.97
    assert info["packets"] == len(decoded) // 160


def test_packets_are_20ms_apart_in_order_with_the_marker_first(tmp_path):
    wav = _write(tmp_path / "in.wav", _signal(16000, 0.5), 16000)
    wav_to_pcap(wav, tmp_path / "a.pcap", codec="PCMA")
    records = list(read_pcap((tmp_path / "a.pcap").read_bytes()))
    packets = [RtpPacket.parse(udp_payload(r.frame)) for r in records]
    assert len(packets) == 25
    assert np.allclose(np.diff([r.time for r in records]), 0.02, atol=1e-5)
    assert [p.sequence for p in packets] == list(range(1, 26))
    assert [p.timestamp for p in packets] == [160 * n for n in range(25)]
    assert {p.payload_type for p in packets} == {8} and {len(p.payload) for p in packets} == {160}
    assert packets[0].marker and not any(p.marker for p in packets[1:])


def test_lead_and_tail_are_silence_around_the_speech(tmp_path):
    wav = _write(tmp_path / "in.wav", _signal(8000, 0.4), 8000)
    info = wav_to_pcap(wav, tmp_path / "b.pcap", lead_s=0.2, tail_s=0.1)
    pcm = pcap_to_pcm(tmp_path / "b.pcap")
    assert info["speech_start_s"] == 0.2 and info["speech_end_s"] == pytest.approx(0.6)
    assert info["packets"] == 35
    assert not pcm[:1600].any() and not pcm[-800:].any() and pcm[1600:4800].any()


def test_stereo_and_other_sample_widths_are_read(tmp_path):
    mono = _signal(8000, 0.2)
    stereo = np.stack([mono, mono], axis=1).reshape(-1)
    assert np.array_equal(read_wav_8k(_write(tmp_path / "s.wav", stereo, 8000, channels=2)), mono)
    eight = ((mono.astype(np.int32) >> 8) + 128).astype(np.uint8)
    got = read_wav_8k(_write(tmp_path / "8.wav", eight, 8000, width=1))
    assert np.abs(got.astype(np.int32) - mono).max() < 256
    wide = mono.astype("<i4") << 8
    b24 = np.frombuffer(wide.tobytes(), np.uint8).reshape(-1, 4)[:, :3].copy()
    assert np.array_equal(read_wav_8k(_write(tmp_path / "24.wav", b24, 8000, width=3)), mono)


def test_bad_input_is_a_specific_error(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF" + struct.pack("<I", 4) + b"WAVE")
    with pytest.raises(WavError):
        read_wav_8k(tmp_path / "x.wav")
    with pytest.raises(WavError):
        read_wav_8k(_write(tmp_path / "empty.wav", np.zeros(0, np.int16), 8000))
    with pytest.raises(WavError):
        read_wav_8k(_write(tmp_path / "odd.wav", np.zeros(80, np.int16), 800))


def test_command_line(tmp_path, capsys):
    wav = _write(tmp_path / "in.wav", _signal(16000, 0.3), 16000)
    assert main([str(wav), str(tmp_path / "c.pcap"), "--lead", "0.1"]) == 0
    assert "20 packets" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.wav"), str(tmp_path / "d.pcap")]) == 2
