// The Talk page: call an agent from the microphone over the browser door (/console/ws).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STAGES = [
    ["endpointing", "Endpointing"],
    ["asr", "Speech recognition"],
    ["llm_first_token", "LLM first token"],
    ["tts_first_audio", "TTS first audio"],
    ["response_latency", "Response latency"],
  ];
  // Counters the tests (and curious people) read: window.talkStats.
  const stats = window.talkStats = {
    sent: 0, received: 0, played: 0, bufferedMs: 0, underruns: 0, cleared: 0,
    state: "idle", callId: null, turns: 0, ended: null,
  };
  let call = null; // {ws, ctx, stream, capture, playback, started}
  let timer = null;

  function setStatus(text, isError = false) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", isError);
  }

  function setState(state) {
    stats.state = state;
    const s = $("state");
    s.textContent = state;
    s.className = `state state-${state}`;
  }

  function show() {
    $("frames-sent").value = stats.sent;
    $("frames-received").value = stats.received;
    $("frames-played").value = stats.played;
    $("buffered-ms").value = stats.bufferedMs;
    $("underruns").value = stats.underruns;
    $("cleared").value = stats.cleared;
  }

  async function loadAgents() {
    const select = $("agent");
    try {
      const { agents } = await Console.api("/console/api/agents");
      select.replaceChildren(...agents.map((a) => Console.el("option", { value: a, text: a })));
      select.disabled = agents.length === 0;
      $("call").disabled = agents.length === 0;
      if (!agents.length) setStatus("No agent can be called.", true);
    } catch (err) {
      select.replaceChildren(Console.el("option", { text: "unavailable" }));
      setStatus(err.status === 403
        ? "This console needs its token: open it as /console/?token=…"
        : `Cannot list the agents: ${err.message}`, true);
    }
  }

  const agentLines = new Map(); // turn -> the <li> its answer is written into
  let lastPhrase = null; // the <li> of the last cached phrase (greeting, filler), if playing

  function addLine(role, text, turn, extra = "") {
    $("transcript-empty").hidden = true;
    const who = role === "caller" ? "You" : "Agent";
    const item = Console.el("li", { class: `${role} ${extra}`, "data-turn": String(turn ?? "") },
      Console.el("span", { class: "who", text: `${who}:` }),
      Console.el("span", { class: "text", text }));
    $("transcript").append(item);
    item.scrollIntoView({ block: "nearest" });
    return item;
  }

  function agentSaid(turn, text) {
    lastPhrase = null;
    const item = agentLines.get(turn);
    if (item) item.querySelector(".text").textContent += ` ${text}`;
    else agentLines.set(turn, addLine("agent", text, turn));
  }

  function turnDone(msg) {
    const item = agentLines.get(msg.turn);
    if (!item && !msg.agent) return;
    const line = item || addLine("agent", "", msg.turn);
    line.querySelector(".text").textContent = msg.agent +
      (msg.outcome === "interrupted" ? " (interrupted)" : "");
  }

  function waterfall(msg) {
    const t = msg.timings || {};
    const total = Math.max(1, ...Object.values(t));
    // Sequential stages, from the caller's last word; the response latency spans them.
    let offset = 0;
    const figure = Console.el("figure", { class: "waterfall" });
    figure.append(Console.el("figcaption", {
      text: `Turn ${msg.turn}: ${msg.outcome}${msg.speculative_asr ? " (speculative ASR)" : ""}`,
    }));
    for (const [key, label] of STAGES) {
      if (!(key in t)) continue;
      const start = key === "response_latency" ? 0 : offset;
      if (key !== "response_latency") offset += t[key];
      const bar = Console.el("span", { class: `bar ${key}`, "aria-hidden": "true" });
      bar.style.left = `${Math.min(100, (start / total) * 100)}%`;
      bar.style.width = `${Math.max(0.5, Math.min(100 - (start / total) * 100,
        (t[key] / total) * 100))}%`;
      figure.append(Console.el("div", { class: "row" },
        Console.el("span", { text: label }),
        Console.el("span", { class: "track" }, bar),
        Console.el("span", { class: "ms", text: `${t[key]} ms` })));
    }
    $("waterfalls").prepend(figure);
  }

  function onEvent(msg) {
    switch (msg.type) {
      case "started":
        stats.callId = msg.call_id;
        call.started = performance.now();
        setStatus(`Connected to ${msg.agent}. Speak when you are ready.`);
        startAudio();
        break;
      case "state":
        setState(msg.state);
        if (msg.state === "listening") lastPhrase = null; // heard to the end
        break;
      case "transcript":
        if (msg.role === "agent") agentSaid(msg.turn, msg.text);
        else if (msg.text) addLine("caller", msg.text, msg.turn);
        break;
      case "phrase":
        if (msg.text) lastPhrase = addLine("agent", msg.text, null, "phrase");
        break;
      case "turn":
        stats.turns += 1;
        turnDone(msg);
        if (msg.timings && Object.keys(msg.timings).length) waterfall(msg);
        break;
      case "clear":
        if (call && call.playback) call.playback.port.postMessage({ type: "clear" });
        if (lastPhrase) lastPhrase.querySelector(".text").textContent += " (cut off)";
        lastPhrase = null;
        break;
      case "hangup":
        stats.ended = msg.reason;
        setStatus(`Call ended (${msg.reason}).`);
        break;
      case "error":
        setStatus(`Refused: ${msg.message}`, true);
        break;
      default:
        break; // barge_in: the clear says it all
    }
  }

  function startAudio() {
    const { ctx, stream } = call;
    const source = ctx.createMediaStreamSource(stream);
    // Low-pass below 8 kHz before the worklet takes every third (or so) sample.
    let node = source;
    for (let i = 0; i < 2; i++) {
      const lp = ctx.createBiquadFilter();
      lp.type = "lowpass";
      lp.frequency.value = 7000;
      node.connect(lp);
      node = lp;
    }
    const capture = new AudioWorkletNode(ctx, "switchboard-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
    });
    node.connect(capture);
    capture.port.onmessage = (event) => {
      const ws = call && call.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(event.data);
      stats.sent += 1;
      if (stats.sent % 5 === 0) {
        const pcm = new Int16Array(event.data);
        let peak = 0;
        for (const v of pcm) peak = Math.max(peak, Math.abs(v));
        $("mic-level").value = peak / 32768;
      }
    };
    call.capture = capture;
  }

  async function placeCall() {
    const agent = $("agent").value;
    $("call").disabled = true;
    $("agent").disabled = true;
    $("transcript").replaceChildren();
    agentLines.clear();
    lastPhrase = null;
    $("waterfalls").replaceChildren();
    $("transcript-empty").hidden = false;
    Object.assign(stats, { sent: 0, received: 0, played: 0, bufferedMs: 0, underruns: 0,
      cleared: 0, callId: null, turns: 0, ended: null });
    show();
    setStatus("Asking for the microphone…");
    let ctx;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: {
        channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true,
      } });
      ctx = new AudioContext({ latencyHint: "interactive" });
      await ctx.audioWorklet.addModule("static/capture-worklet.js");
      await ctx.audioWorklet.addModule("static/playback-worklet.js");
      await ctx.resume();
    } catch (err) {
      setStatus(`No microphone: ${err.message}`, true);
      if (stream) stream.getTracks().forEach((t) => t.stop());
      if (ctx) ctx.close();
      resetButtons();
      return;
    }
    const playback = new AudioWorkletNode(ctx, "switchboard-playback", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { inputRate: 16000, prefillMs: 60, maxMs: 1000 },
    });
    playback.connect(ctx.destination);
    playback.port.onmessage = (event) => {
      const s = event.data;
      stats.played = s.played;
      stats.bufferedMs = s.bufferedMs;
      stats.underruns = s.underruns;
      stats.cleared = s.cleared;
    };
    const ws = new WebSocket(Console.wsUrl("/console/ws"));
    ws.binaryType = "arraybuffer";
    call = { ws, ctx, stream, playback, capture: null, started: null };
    setStatus("Calling…");
    setState("calling");
    $("hangup").disabled = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: "start", agent }));
    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        onEvent(JSON.parse(event.data));
      } else {
        stats.received += event.data.byteLength / 640;
        playback.port.postMessage(event.data, [event.data]);
      }
    };
    ws.onclose = (event) => {
      if (!stats.ended) {
        stats.ended = event.reason || `closed (${event.code})`;
        setStatus(`Call ended: ${stats.ended}.`, event.code !== 1000);
      }
      endCall();
    };
    timer = setInterval(() => {
      show();
      if (call && call.started) {
        $("duration").textContent = Console.duration((performance.now() - call.started) / 1000);
      }
    }, 250);
  }

  function hangUp() {
    if (!call) return;
    const ws = call.ws;
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "hangup" }));
    } else {
      ws.close();
      endCall();
    }
    setStatus("Hanging up…");
  }

  function endCall() {
    if (!call) return;
    const { ctx, stream, capture, playback } = call;
    call = null;
    if (capture) capture.port.postMessage("stop");
    playback.port.postMessage({ type: "stop" });
    stream.getTracks().forEach((t) => t.stop());
    // Let the last counters arrive before the context goes.
    setTimeout(() => { ctx.close(); show(); }, 300);
    clearInterval(timer);
    setState("ended");
    resetButtons();
  }

  function resetButtons() {
    $("hangup").disabled = true;
    $("call").disabled = false;
    $("agent").disabled = false;
    $("call").focus();
  }

  $("call").addEventListener("click", placeCall);
  $("hangup").addEventListener("click", hangUp);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && call) hangUp();
  });
  if (Console.token()) {
    $("watch-link").href = `watch?token=${encodeURIComponent(Console.token())}`;
  }
  loadAgents();
})();
