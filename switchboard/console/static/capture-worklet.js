// The microphone side of the Talk page: AudioContext-rate float samples in, 20 ms frames
// of 16 kHz little-endian int16 out (posted to the page, which sends them on the
// WebSocket). The page puts a low-pass filter before this node; here the signal is
// resampled by linear interpolation, so any AudioContext rate works.
"use strict";

const OUT_RATE = 16000;
const FRAME = OUT_RATE / 50; // 320 samples: 20 ms

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.pos = 0; // next output sample's position; -1 is the previous block's last sample
    this.prev = 0;
    this.frame = new Int16Array(FRAME);
    this.n = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const channel = inputs[0] && inputs[0][0];
    const len = channel ? channel.length : 128; // no input yet: silence
    const at = (k) => (k < 0 ? this.prev : channel ? channel[k] : 0);
    let pos = this.pos;
    while (pos < len - 1) {
      const i = Math.floor(pos);
      const a = at(i);
      const sample = a + (at(i + 1) - a) * (pos - i);
      const clipped = Math.max(-1, Math.min(1, sample));
      this.frame[this.n++] = clipped < 0 ? clipped * 32768 : clipped * 32767;
      if (this.n === FRAME) {
        const out = this.frame;
        this.port.postMessage(out.buffer, [out.buffer]);
        this.frame = new Int16Array(FRAME);
        this.n = 0;
      }
      pos += this.step;
    }
    this.pos = pos - len;
    this.prev = at(len - 1);
    return true;
  }
}

registerProcessor("switchboard-capture", CaptureProcessor);
