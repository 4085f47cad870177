// Shared by the Talk and Watch pages: the console token and small helpers.
// A token given once as ?token=... in the page URL is kept for this tab only.
"use strict";

const Console = (() => {
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("switchboard-console-token", params.get("token"));
  }
  const token = () => sessionStorage.getItem("switchboard-console-token") || "";

  async function api(path) {
    const headers = token() ? { "X-Switchboard-Token": token() } : {};
    const resp = await fetch(path, { headers, cache: "no-store" });
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).error || detail; } catch (e) { /* not JSON */ }
      const err = new Error(`${path}: ${resp.status} ${detail}`);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  }

  function wsUrl(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = token() ? `?token=${encodeURIComponent(token())}` : "";
    return `${scheme}//${location.host}${path}${query}`;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const m = Math.floor(s / 60);
    return `${m}:${String(s % 60).padStart(2, "0")}`;
  }

  function when(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "";
  }

  return { api, wsUrl, el, duration, when, token };
})();
