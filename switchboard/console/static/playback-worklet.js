// The speaker side of the Talk page: a small jitter buffer. 16 kHz int16 frames posted by
// the page are queued; playback starts once `prefillMs` is buffered and, after running
// dry (an underrun, counted), waits for the prefill again. {type: "clear"} (barge-in)
// drops everything not yet played. Upsampled to the AudioContext rate by linear
// interpolation. Counters go back to the page about ten times a second.
"use strict";

const FRAME = 320; // samples per 20 ms at 16 kHz

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.inRate = o.inputRate || 16000;
    this.step = this.inRate / sampleRate; // input samples per output sample
    this.prefill = Math.round(((o.prefillMs || 60) * this.inRate) / 1000);
    this.maxQueued = Math.round(((o.maxMs || 1000) * this.inRate) / 1000);
    this.queue = []; // Float32Array chunks
    this.head = 0; // read index in queue[0]
    this.queued = 0; // samples not yet played
    this.playing = false;
    this.pos = 0;
    this.a = 0;
    this.b = 0;
    this.stats = { received: 0, played: 0, underruns: 0, dropped: 0, cleared: 0 };
    this.playedSamples = 0;
    this.quanta = 0;
    this.running = true;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(data) {
    if (data instanceof ArrayBuffer) {
      const pcm = new Int16Array(data);
      const samples = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
      this.queue.push(samples);
      this.queued += samples.length;
      this.stats.received += samples.length / FRAME;
      while (this.queued > this.maxQueued && this.queue.length > 1) {
        const old = this.queue.shift(); // too far behind: drop the oldest
        this.queued -= old.length - this.head;
        this.stats.dropped += (old.length - this.head) / FRAME;
        this.head = 0;
      }
    } else if (data && data.type === "clear") {
      this.queue = [];
      this.head = 0;
      this.queued = 0;
      this.playing = false;
      this.a = this.b = 0;
      this.stats.cleared += 1;
    } else if (data && data.type === "stop") {
      this.running = false;
    }
  }

  take() {
    while (this.queue.length && this.head >= this.queue[0].length) {
      this.queue.shift();
      this.head = 0;
    }
    if (!this.queue.length) return null;
    this.queued -= 1;
    this.playedSamples += 1;
    return this.queue[0][this.head++];
  }

  process(inputs, outputs) {
    if (!this.running) return false;
    const out = outputs[0];
    const first = out[0];
    if (!this.playing && this.queued >= this.prefill) this.playing = true;
    for (let i = 0; i < first.length; i++) {
      if (!this.playing) {
        first[i] = 0;
        continue;
      }
      first[i] = this.a + (this.b - this.a) * this.pos;
      this.pos += this.step;
      while (this.pos >= 1) {
        this.pos -= 1;
        this.a = this.b;
        const next = this.take();
        if (next === null) {
          this.b = 0;
          this.playing = false;
          this.stats.underruns += 1;
          break;
        }
        this.b = next;
      }
    }
    for (let c = 1; c < out.length; c++) out[c].set(first);
    if (++this.quanta % 32 === 0) {
      this.stats.played = Math.floor(this.playedSamples / FRAME);
      this.port.postMessage({
        ...this.stats,
        received: Math.floor(this.stats.received),
        bufferedMs: Math.round((this.queued * 1000) / this.inRate),
        playing: this.playing,
      });
    }
    return true;
  }
}

registerProcessor("switchboard-playback", PlaybackProcessor);
