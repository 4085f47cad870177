// The Watch page: the calls up now (GET /console/api/calls, every second) and recent
// calls from the call records (GET /calls, GET /calls/{id}).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { el } = Console;
  let activeIds = "";
  let lastRecent = 0;

  function cell(label, content, cls = "") {
    const td = el("td", { "data-label": label, class: cls });
    td.append(content instanceof Node ? content : document.createTextNode(content ?? ""));
    return td;
  }

  function recordLink(id, text) {
    return el("a", { href: `/calls/${encodeURIComponent(id)}` }, text);
  }

  async function refreshActive() {
    let data;
    try {
      data = await Console.api("/console/api/calls");
    } catch (err) {
      $("active-summary").textContent = err.status === 403
        ? "This console needs its token: open it as /console/watch?token=…"
        : `Cannot read the active calls: ${err.message}`;
      $("active-summary").classList.add("error");
      return;
    }
    $("active-summary").classList.remove("error");
    const n = data.count;
    $("active-summary").textContent = n === 0 ? "No calls up." : `${n} call${n > 1 ? "s" : ""} up.`;
    const rows = data.active.map((c) => {
      const state = el("span", { class: `state state-${c.state}`, text: c.state });
      const last = c.last_caller ? `“${c.last_caller}”` : "";
      return el("tr", { "data-call-id": c.call_id },
        cell("Door", c.transport), cell("Caller", c.caller), cell("Agent", c.agent),
        cell("State", state), cell("Duration", Console.duration(c.duration_s), "num"),
        cell("Turns", String(c.turns), "num"), cell("Last words", last));
    });
    $("active").tBodies[0].replaceChildren(...rows);
    const ids = data.active.map((c) => c.call_id).join(",");
    if (ids !== activeIds || Date.now() - lastRecent > 5000) {
      activeIds = ids;
      refreshRecent();
    }
  }

  async function refreshRecent() {
    lastRecent = Date.now();
    let data;
    try {
      data = await Console.api("/calls?limit=20");
    } catch (err) {
      $("recent-summary").textContent = err.status === 404 || err.status === 405
        ? "Call records are turned off (records.enabled)."
        : `Cannot read the call records: ${err.message}`;
      return;
    }
    $("recent-summary").textContent = data.count ? "" : "No calls recorded yet.";
    const rows = data.calls.map((c) => {
      const open = el("button", { type: "button", "aria-controls": "details",
        "aria-label": `Details of the call from ${c.caller || "unknown"} at ${c.started_at}` },
        "Details");
      open.addEventListener("click", () => showDetails(c.id));
      const started = c.started_at ? new Date(c.started_at).toLocaleTimeString() : "";
      const duration = c.duration_s == null ? "" : Console.duration(c.duration_s);
      const record = el("span", {}, open, " ", recordLink(c.id, "JSON"));
      return el("tr", { "data-call-id": c.call_id },
        cell("Started", started), cell("Door", c.transport), cell("Caller", c.caller),
        cell("Agent", c.agent), cell("Duration", duration, "num"),
        cell("Outcome", c.outcome || "in progress"), cell("Turns", String(c.turn_count), "num"),
        cell("Record", record));
    });
    $("recent").tBodies[0].replaceChildren(...rows);
  }

  async function showDetails(id) {
    let call;
    try {
      call = await Console.api(`/calls/${encodeURIComponent(id)}`);
    } catch (err) {
      $("recent-summary").textContent = `Cannot read that call: ${err.message}`;
      return;
    }
    $("details").hidden = false;
    $("details-heading").textContent =
      `Call from ${call.caller || "unknown"} to ${call.agent} (${call.transport})`;
    $("details-json").href = `/calls/${encodeURIComponent(id)}`;
    const lines = (call.transcript || []).map((line) => el("li",
      { class: line.role === "caller" ? "caller" : "agent" },
      el("span", { class: "who", text: line.role === "caller" ? "Caller:" : "Agent:" }),
      line.text));
    if (!lines.length) lines.push(el("li", { class: "empty", text: "Nothing was said." }));
    $("details-transcript").replaceChildren(...lines);
    const ms = (t, key) => (t && key in t ? String(Math.round(t[key] * 1000)) : "");
    const turns = (call.turns || []).map((t) => el("tr", {},
      cell("Turn", String(t.index), "num"), cell("Outcome", t.outcome),
      cell("ASR", ms(t.timings, "asr"), "num"),
      cell("LLM first token", ms(t.timings, "llm_first_token"), "num"),
      cell("TTS first audio", ms(t.timings, "tts_first_audio"), "num"),
      cell("Response latency", ms(t.timings, "response_latency"), "num")));
    $("details-turns").tBodies[0].replaceChildren(...turns);
    $("details-heading").focus();
  }

  if (Console.token()) {
    $("talk-link").href = `./?token=${encodeURIComponent(Console.token())}`;
  }
  refreshActive();
  setInterval(refreshActive, 1000);
})();
