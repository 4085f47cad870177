"""A fake Ollama server for tests: no Ollama binary can run here.

It replays Ollama's documented wire formats over loopback HTTP:
- GET  /api/tags             {"models": [{"name", "model", "modified_at", "size", ...}]}
- POST /api/chat             newline-delimited JSON when streaming (the default):
      {"model","created_at","message":{"role":"assistant","content":"..."},"done":false}
      ... then {"model","created_at","message":{...,"content":""},"done":true,
      "done_reason":"stop","total_duration","load_duration","prompt_eval_count",
      "prompt_eval_duration","eval_count","eval_duration"};
      with "messages": [] it only loads the model ("done_reason":"load");
      an unknown model gives 404 {"error":"model \"x\" not found, try pulling it first"}.
- POST /api/show             {"modelfile", "details", "capabilities": ["completion", ...]}
      (`capabilities` below; "tools" in it means the model can call tools).
- POST /api/chat with "tools": when `tool_calls` is set, one chunk carries them first:
      {"message":{"role":"assistant","content":"","tool_calls":[{"function":
      {"name":"...","arguments":{...}}}]},"done":false}.
- POST /v1/chat/completions  OpenAI-style server-sent events, "data: {chunk}\\n\\n" ending
      with "data: [DONE]\\n\\n".

`mode` switches the failure: "ok", "error" (HTTP 500 {"error": ...}), "close" (the
connection is dropped after `fail_after` pieces), "hang" (after `fail_after` pieces
nothing more is sent until reset/stop), "no_done" (the stream ends cleanly but without
its final done / [DONE] message). Every request body is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "smollm2:135m"
DEFAULT_REPLY = ("We", " open", " at", " nine", " on", " Saturday", ".")


class FakeOllama:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.reset()

    def reset(self) -> None:
        self.mode = "ok"
        self.fail_after = 2
        self.reply: tuple[str, ...] = DEFAULT_REPLY
        self.models: tuple[str, ...] = (DEFAULT_MODEL,)
        self.capabilities: tuple[str, ...] = ("completion",)
        self.tool_calls: list[dict[str, Any]] = []  # [{"name": ..., "arguments": {...}}]
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.disconnects = 0  # streams whose client went away before the end
        if hasattr(self, "_release"):
            self._loop.call_soon_threadsafe(self._release.set)
        self._release = asyncio.Event()

    # --- lifecycle (called from the test thread) -------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/v1/chat/completions", self._openai)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    # --- handlers ----------------------------------------------------------------------

    async def _tags(self, request: web.Request) -> web.Response:
        self.requests.append(("/api/tags", {}))
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-01-01T00:00:00.000000000Z",
                "size": 270898672,
                "digest": "9077fe9d2ae1a4a41a868836b56b8163731a8fe16621397028c2c76f838c6907",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "135M",
                    "quantization_level": "Q4_1",
                },
            }
            for name in self.models
        ]
        return web.json_response({"models": models})

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("/api/show", body))
        if (refused := self._refusal(body.get("model", ""))) is not None:
            return refused
        return web.json_response({
            "modelfile": "FROM smollm2", "parameters": "", "template": "{{ .Prompt }}",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "135M",
                        "quantization_level": "Q4_1"},
            "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
            "modified_at": "2025-01-01T00:00:00.000000000Z",
            "capabilities": list(self.capabilities),
        })

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("/api/chat", body))
        model = body.get("model", "")
        if (refused := self._refusal(model)) is not None:
            return refused
        done = {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
        }
        if not body.get("messages"):  # a load request
            return web.json_response({**done, "done_reason": "load"})
        timing = {
            "done_reason": "stop",
            "total_duration": 4_883_583_458,
            "load_duration": 1_334_875,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 342_546_000,
            "eval_count": len(self.reply),
            "eval_duration": 4_535_599_000,
        }
        if body.get("stream", True) is False:
            message = {"role": "assistant", "content": "".join(self.reply)}
            return web.json_response({**done, "message": message, **timing})
        lines = [
            json.dumps(
                {
                    "model": model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
            )
            + "\n"
            for piece in self.reply
        ]
        if body.get("tools") and self.tool_calls:
            calls = [{"function": call} for call in self.tool_calls]
            lines.insert(0, json.dumps({
                "model": model, "created_at": _now(),
                "message": {"role": "assistant", "content": "", "tool_calls": calls},
                "done": False}) + "\n")
        final = json.dumps({**done, **timing}) + "\n"
        return await self._stream(request, "application/x-ndjson", lines, final)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("/v1/chat/completions", body))
        model = body.get("model", "")
        if (refused := self._refusal(model)) is not None:
            return refused

        def chunk(delta: dict[str, str], finish: str | None) -> str:
            event = {
                "id": "chatcmpl-42",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(event)}\n\n"

        lines = [chunk({"role": "assistant", "content": p}, None) for p in self.reply]
        final = chunk({"role": "assistant", "content": ""}, "stop") + "data: [DONE]\n\n"
        return await self._stream(request, "text/event-stream", lines, final)

    def _refusal(self, model: str) -> web.Response | None:
        if self.mode == "error":
            return web.json_response({"error": "llama runner process has terminated"}, status=500)
        if model not in self.models and f"{model}:latest" not in self.models:
            return web.json_response(
                {"error": f'model "{model}" not found, try pulling it first'}, status=404
            )
        return None

    async def _stream(
        self, request: web.Request, content_type: str, lines: list[str], final: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        try:
            for i, line in enumerate(lines):
                if i == self.fail_after and self.mode in ("close", "hang"):
                    if self.mode == "hang":
                        await self._hang(request)
                    else:
                        assert request.transport is not None
                        request.transport.abort()  # drop the TCP connection mid-answer
                    return resp
                await resp.write(line.encode())
            if self.mode != "no_done":
                await resp.write(final.encode())
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            self.disconnects += 1
        return resp

    async def _hang(self, request: web.Request) -> None:
        """Send nothing until reset/stop, noting when the client gives up and closes."""
        while not self._release.is_set():
            if request.transport is None or request.transport.is_closing():
                self.disconnects += 1
                return
            try:
                await asyncio.wait_for(self._release.wait(), 0.02)
            except TimeoutError:
                pass


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


def main() -> None:
    """The fake as a process of its own, so a test can kill it (SIGKILL) mid-answer:

        python -m tests.pipeline.fake_ollama REPLY_PIECE...

    prints its URL, then "streaming" each time an answer stream starts; a line on stdin
    sets the mode for the next requests ("hang 4": four pieces, then nothing)."""
    import sys

    server = FakeOllama()
    server.start()
    if len(sys.argv) > 1:
        server.reply = tuple(sys.argv[1:])
    print(server.url, flush=True)

    def watch() -> None:
        seen = 0
        while True:
            chats = [b for path, b in server.requests if path == "/api/chat" and b.get("messages")]
            for _ in chats[seen:]:
                print("streaming", flush=True)
            seen = len(chats)
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    for line in sys.stdin:  # ends when the test closes stdin (or kills us)
        mode, _, after = line.strip().partition(" ")
        server.mode, server.fail_after = mode or "ok", int(after or 2)


if __name__ == "__main__":
    main()
