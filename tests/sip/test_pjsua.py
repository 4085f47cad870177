"""Interop with a real PJSIP user agent (pjsua2): echo correlation and RFC 4733 DTMF.

PJSIP calls `switchboard serve --agent echo`, plays a spoken sentence, records what
comes back, and sends a DTMF digit. What comes back must be the same speech (strong
normalised cross-correlation at a positive lag), and the digit PJSIP sends must arrive
as the same digit through Switchboard's RFC 4733 decoder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import switchboard

pytestmark = pytest.mark.slow
PEER = Path(__file__).with_name("pjsua_peer.py")


def speech_wav(path: Path) -> np.ndarray:
    """A spoken sentence at 8 kHz (espeak-ng, as a phone would carry it)."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw),
                    "Thank you for calling. Please say the name of the person you want."],
                   check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(path)],
                   check=True, capture_output=True)
    return read_wav(path)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        rate = w.getframerate()
    if rate != 8000:  # the recorder writes at the conference bridge rate
        from scipy.signal import resample_poly
        data = resample_poly(data, 8000, rate)
    return data


def best_correlation(sent: np.ndarray, got: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Normalised cross-correlation of the sent speech against the recording at every
    lag up to max_lag (speech decorrelates within a sample or two, so no lag is skipped)."""
    from scipy.signal import correlate

    a = sent - sent.mean()
    got = got[: max_lag + len(a)]
    if len(got) < len(a):
        return 0.0, 0
    num = correlate(got, a, mode="valid", method="fft")
    energy = np.concatenate(([0.0], np.cumsum(got * got)))
    seg_energy = energy[len(a):] - energy[: len(energy) - len(a)]
    denom = np.sqrt((a * a).sum() * np.maximum(seg_energy, 1e-9))
    c = num / denom
    lag = int(np.argmax(c))
    return float(c[lag]), lag


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pjsua_hears_its_own_speech_and_dtmf_round_trips(tmp_path, transport):
    sent_path, got_path = tmp_path / "sent.wav", tmp_path / "got.wav"
    sent = speech_wav(sent_path)
    seconds = len(sent) / 8000 + 2.0
    with switchboard(tmp_path, "--agent", "echo") as server:
        out = subprocess.run(
            [sys.executable, str(PEER), "--uri", f"sip:echo@127.0.0.1:{server.sip_port}",
             "--play", str(sent_path), "--record", str(got_path), "--seconds", str(seconds),
             "--dtmf", "5", "--transport", transport],
            capture_output=True, text=True, timeout=seconds + 60)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        metrics = server.metrics()
    assert result["confirmed"] and result["media_active"], result
    assert result["dtmf_sent"], result
    assert re.search(r"DTMF 5 \(RFC 4733\)", server.log()), server.log()[-3000:]
    assert re.search(r'switchboard_dtmf_digits_total\{method="rfc4733",transport="sip"\} 1\.0',
                     metrics), metrics
    got = read_wav(got_path)
    # Compare the first 2 s: the DTMF sent later replaces PJSIP's audio packets for a
    # moment, and the jitter buffer may re-time the stream after that gap.
    corr, lag = best_correlation(sent[: 2 * 8000], got, max_lag=8000 * 2)
    # G.711 twice, a jitter buffer and PJSIP's own bridge: the speech is the same
    # speech if the correlation is strong; unrelated audio scores below 0.2.
    assert corr > 0.6, (corr, lag)
    assert 0.1 * 8000 < lag < 1.5 * 8000, lag  # the echo agent's 0.3 s plus the path
