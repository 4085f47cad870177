"""Energy voice-activity detection with an adaptive noise floor, pre-roll and echo awareness.

One EnergyVad per call direction. Feed it every 20 ms frame of int16 mono PCM in order;
it counts frames and never reads a clock, so the same audio always gives the same events
at the same frame indices.

A frame counts as speech when its RMS level (dBFS) is above the threshold

    max(noise floor + margin, absolute minimum, far-end level - echo return loss)

and, when webrtc_mode is set, webrtcvad agrees. The frame decisions drive the
four-state machine QUIET -> STARTING -> SPEAKING -> STOPPING -> QUIET, which emits:

- SpeechStart after `onset_ms` of consecutive speech (`barge_in_ms` while the bot's
  own audio is playing), carrying the pre-roll so the first syllable reaches ASR;
- SilenceStart on the first silent frame of an utterance (a possible end of turn:
  the engine may start ASR speculatively);
- SpeechResumed when speech comes back before the hangover ran out (drop that result);
- SpeechEnd after `hangover_ms` of silence.

Levels use 20*log10(rms / 32768): a full-scale square wave is 0 dBFS, a full-scale
sine -3 dBFS. audioop.rms truncates to an integer, which costs under 1 dB of accuracy
only below -70 dBFS, where every level is clamped to the floor minimum anyway.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections import deque
from dataclasses import dataclass

import webrtcvad

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_MS = 20
SILENCE_DBFS = -100.0  # what rms_dbfs returns for digital silence (rms 0)
_FULL_SCALE = 32768.0
_WEBRTC_RATES = (8000, 16000, 32000, 48000)


def frame_samples(rate: int) -> int:
    """Samples in one 20 ms frame at `rate`."""
    if rate <= 0 or rate % (1000 // FRAME_MS):
        raise ValueError(f"sample rate {rate} does not give a whole number of samples per 20 ms")
    return rate * FRAME_MS // 1000


def rms_dbfs(frame: bytes) -> float:
    """RMS level of int16 mono PCM in dBFS; SILENCE_DBFS for all zeros or an empty frame."""
    if len(frame) % 2:
        raise ValueError(f"PCM16 must have an even number of bytes, got {len(frame)}")
    rms = audioop.rms(frame, 2) if frame else 0
    return 20.0 * math.log10(rms / _FULL_SCALE) if rms else SILENCE_DBFS


class VadState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Speech confirmed at `frame`. `preroll` holds the frames from `preroll_ms` before
    `onset_frame` up to and including `frame`, oldest first: ASR should start with them
    and continue with the frames after `frame`."""

    frame: int
    onset_frame: int
    preroll: tuple[bytes, ...]
    barge_in: bool  # the bot's audio was playing: the barge-in onset applied

    @property
    def audio(self) -> bytes:
        return b"".join(self.preroll)


@dataclass(frozen=True, slots=True)
class SilenceStart:
    """First silent frame after speech: a possible end of turn."""

    frame: int


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Speech came back at `frame` after `silence_frames` silent frames; the utterance goes on."""

    frame: int
    silence_frames: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The utterance that started at `onset_frame` ended: its last speech frame was
    `last_speech_frame`, and `frame` is where the hangover ran out."""

    frame: int
    onset_frame: int
    last_speech_frame: int

    @property
    def speech_frames(self) -> int:
        return self.last_speech_frame - self.onset_frame + 1


VadEvent = SpeechStart | SilenceStart | SpeechResumed | SpeechEnd


def _frames(ms: float, name: str, minimum: int = 0) -> int:
    """Milliseconds to whole frames, rounding up so a setting is never shortened."""
    n = math.ceil(ms / FRAME_MS - 1e-9)
    if n < minimum:
        raise ValueError(f"{name}={ms} ms must be at least {minimum * FRAME_MS} ms")
    return n


class EnergyVad:
    """Frame-counting energy VAD. See the module docstring for the decision rule.

    Defaults are for telephone speech normalised to 16 kHz (or 8 kHz) int16:
    talkers sit around -35 to -15 dBFS, line noise around -70 to -45 dBFS.
    """

    def __init__(
        self,
        rate: int = 16000,
        *,
        onset_ms: float = 80,
        hangover_ms: float = 300,
        preroll_ms: float = 240,
        barge_in_ms: float = 240,
        margin_db: float = 10.0,
        hysteresis_db: float = 3.0,
        min_speech_dbfs: float = -50.0,
        floor_min_dbfs: float = -80.0,
        initial_floor_max_dbfs: float = -35.0,
        floor_rise_db_per_s: float = 3.0,
        floor_fast_rise_db_per_s: float = 20.0,
        floor_fall_ms: float = 40.0,
        stationary_ms: float = 500,
        stationary_db: float = 1.5,
        erl_db: float = 15.0,
        echo_tail_ms: float = 500,
        webrtc_mode: int | None = None,
    ) -> None:
        self.rate = rate
        self.frame_samples = frame_samples(rate)
        self.frame_bytes = self.frame_samples * 2
        self.onset_frames = _frames(onset_ms, "onset_ms", 1)
        self.hangover_frames = _frames(hangover_ms, "hangover_ms", 1)
        self.preroll_frames = _frames(preroll_ms, "preroll_ms")
        self.barge_in_frames = _frames(barge_in_ms, "barge_in_ms", 1)
        self.margin_db = margin_db
        self.hysteresis_db = hysteresis_db
        self.min_speech_dbfs = min_speech_dbfs
        self.floor_min_dbfs = floor_min_dbfs
        self.initial_floor_max_dbfs = initial_floor_max_dbfs
        self.erl_db = erl_db
        frame_s = FRAME_MS / 1000
        self._rise = floor_rise_db_per_s * frame_s
        self._fast_rise = floor_fast_rise_db_per_s * frame_s
        self._fall = 1.0 - math.exp(-FRAME_MS / floor_fall_ms) if floor_fall_ms > 0 else 1.0
        self._stationary_frames = _frames(stationary_ms, "stationary_ms", 2)
        self._stationary_db = stationary_db
        self._echo_tail_frames = _frames(echo_tail_ms, "echo_tail_ms", 1)
        self._webrtc: webrtcvad.Vad | None = None
        if webrtc_mode is not None:
            if rate not in _WEBRTC_RATES:
                raise ValueError(f"webrtcvad needs a rate in {_WEBRTC_RATES}, got {rate}")
            if webrtc_mode not in (0, 1, 2, 3):
                raise ValueError(f"webrtc_mode must be 0-3, got {webrtc_mode}")
            self._webrtc = webrtcvad.Vad(webrtc_mode)
        self.reset()

    def reset(self) -> None:
        """Forget all audio, state and the noise floor, as for a new call."""
        self.state = VadState.QUIET
        self.frame_index = -1  # index of the last frame processed
        self.level_dbfs = SILENCE_DBFS
        self.floor_dbfs: float | None = None
        self.threshold_dbfs = self.min_speech_dbfs
        self.is_speech = False  # the last frame's decision
        self._run = 0  # consecutive speech frames while STARTING
        self._onset_frame = 0
        self._silence = 0  # frames since SilenceStart while STOPPING
        self._history: deque[bytes] = deque(
            maxlen=self.preroll_frames + max(self.onset_frames, self.barge_in_frames)
        )
        # Sum of |level change| over the last frames: small for stationary noise, large for
        # speech, whose level swings with every syllable.
        self._deltas: deque[float] = deque(maxlen=self._stationary_frames - 1)
        self._delta_sum = 0.0
        self._last_level = SILENCE_DBFS
        self._far: deque[float] = deque(maxlen=self._echo_tail_frames)
        self._far_pending = SILENCE_DBFS
        self._far_max = SILENCE_DBFS

    # -- far end (echo awareness) -------------------------------------------------

    def note_far_end(self, frame: bytes) -> None:
        """Tell the VAD about one 20 ms frame of the bot's outbound audio (call once per
        frame sent, at any rate). Its echo may come back for `echo_tail_ms`."""
        self.set_far_end_level(rms_dbfs(frame))

    def set_far_end_level(self, dbfs: float) -> None:
        """As note_far_end, with the level already measured. Several calls between two
        process() calls keep the loudest."""
        self._far_pending = max(self._far_pending, dbfs)

    @property
    def far_end_dbfs(self) -> float:
        """Loudest bot level within the echo tail, SILENCE_DBFS when the bot is quiet."""
        return self._far_max

    @property
    def bot_audible(self) -> bool:
        """The bot's audio is (or was within the echo tail) at a speech-like level."""
        return self.far_end_dbfs >= self.min_speech_dbfs

    # -- metrics ----------------------------------------------------------------

    @property
    def probability(self) -> float:
        """A speech probability-like value in 0..1 for metrics: the last frame's level
        relative to the threshold through a logistic of 3 dB scale (0.5 at threshold)."""
        x = (self.level_dbfs - self.threshold_dbfs) / 3.0
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))

    @property
    def silence_frames(self) -> int:
        """Silent frames so far in STOPPING (0 in the other states)."""
        return self._silence if self.state is VadState.STOPPING else 0

    # -- the frame path ----------------------------------------------------------------

    def process(self, frame: bytes) -> VadEvent | None:
        """Take the next 20 ms frame; return the event it causes, if any."""
        if len(frame) != self.frame_bytes:
            raise ValueError(
                f"VAD at {self.rate} Hz needs {self.frame_bytes}-byte frames, got {len(frame)}"
            )
        self.frame_index += 1
        self._far.append(self._far_pending)
        self._far_pending = SILENCE_DBFS
        self._far_max = max(self._far)
        self._history.append(frame)
        level = rms_dbfs(frame)
        self.level_dbfs = level
        self._track_floor(max(level, self.floor_min_dbfs))
        self.is_speech = self._decide(frame, level)
        return self._step(self.is_speech)

    def _track_floor(self, level: float) -> None:
        floor = self.floor_dbfs
        if floor is None:
            # Start under the first frame so a caller who talks at once is not taken for noise.
            self.floor_dbfs = min(level, self.initial_floor_max_dbfs)
            self._last_level = level
            return
        delta = abs(level - self._last_level)
        self._last_level = level
        if len(self._deltas) == self._deltas.maxlen:
            self._delta_sum -= self._deltas[0]
        self._deltas.append(delta)
        self._delta_sum += delta
        if level < floor:
            floor += self._fall * (level - floor)
        else:
            n = len(self._deltas)
            stationary = n == self._deltas.maxlen and self._delta_sum < self._stationary_db * n
            floor += min(level - floor, self._fast_rise if stationary else self._rise)
        self.floor_dbfs = floor

    def _decide(self, frame: bytes, level: float) -> bool:
        assert self.floor_dbfs is not None
        threshold = max(
            self.floor_dbfs + self.margin_db,
            self.min_speech_dbfs,
            self._far_max - self.erl_db,
        )
        self.threshold_dbfs = threshold
        if self.state is not VadState.QUIET:
            # Hysteresis: once a run has begun, dips between syllables should not end it.
            threshold = max(threshold - self.hysteresis_db, self.min_speech_dbfs)
        if level <= threshold:
            return False
        return self._webrtc is None or self._webrtc.is_speech(frame, self.rate)

    def _step(self, speech: bool) -> VadEvent | None:
        state = self.state
        i = self.frame_index
        if state is VadState.QUIET or state is VadState.STARTING:
            if not speech:
                self.state = VadState.QUIET
                self._run = 0
                return None
            if self._run == 0:
                self._onset_frame = i
            self._run += 1
            barge_in = self.bot_audible
            if self._run < (self.barge_in_frames if barge_in else self.onset_frames):
                self.state = VadState.STARTING
                return None
            self.state = VadState.SPEAKING
            self._run = 0
            keep = min(len(self._history), self.preroll_frames + i - self._onset_frame + 1)
            preroll = tuple(self._history)[len(self._history) - keep :]
            return SpeechStart(i, self._onset_frame, preroll, barge_in)
        if state is VadState.SPEAKING:
            if speech:
                return None
            self.state = VadState.STOPPING
            self._silence = 1
            if self._silence >= self.hangover_frames:
                return self._end()
            return SilenceStart(i)
        # STOPPING
        if speech:
            self.state = VadState.SPEAKING
            silent, self._silence = self._silence, 0
            return SpeechResumed(i, silent)
        self._silence += 1
        if self._silence >= self.hangover_frames:
            return self._end()
        return None

    def _end(self) -> SpeechEnd:
        self.state = VadState.QUIET
        i = self.frame_index
        event = SpeechEnd(i, self._onset_frame, i - self._silence)
        self._silence = 0
        return event
