"""LLM token stream -> speakable clause chunks for TTS.

Two small pure, synchronous state machines, fed token by token on the event loop:

- `SpeechSanitizer` strips what a voice must not read aloud: markdown emphasis, headings,
  list markers, code ticks, emoji. It works on the stream (a `**` or a `1.` list marker
  may be split across tokens), so it holds back only the start of a line until it knows
  whether a marker is there.
- `ClauseChunker` cuts the cleaned text where TTS can start: the first chunk as early as
  a few words make sense (a clause boundary after `first_min_words`, or any sentence
  end, or a space after `first_max_words`: TTS time grows with the chunk, and the caller
  waits for all of the first one), later chunks at sentence ends (a long sentence is cut
  at a clause boundary, a run-on one at a space). A boundary is only taken once the
  character after it is seen, so "3.5", "1,000", "3:30" and "e.g." never split; known
  abbreviations ("Dr.", "Mr.") and initials ("J. Smith") do not end a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:—–"
_CLOSERS = "\"')]}”’»*_`"  # markdown emphasis may close a sentence too
# Lowercased words (without the final dot) that a following "." does not end a sentence.
ABBREVIATIONS = frozenset(
    {
        "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "approx",
        "no", "nos", "vol", "fig", "inc", "ltd", "co", "corp", "dept", "est", "min", "max",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
        "mon", "tue", "wed", "thu", "fri", "sat", "sun", "ave", "blvd", "rd", "apt", "ext",
    }
)
_WORD = re.compile(r"\w(?:[\w']|[.,:](?=\w))*")  # "1,000", "3.5", "e.g" are one word
_SPEAKABLE = re.compile(r"\w")


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    first_min_words: int = 4  # words before a clause boundary may end the first chunk
    first_max_words: int = 10  # no boundary in the first chunk by then: cut at a space
    clause_min_words: int = 12  # after the first chunk, cut at a clause only this far in
    max_words: int = 30  # no boundary by then: cut at the last space

    def __post_init__(self) -> None:
        if not (1 <= self.first_min_words <= self.clause_min_words <= self.max_words
                and self.first_min_words <= self.first_max_words <= self.max_words):
            raise ValueError(
                "ChunkPolicy needs 1 <= first_min_words <= clause_min_words <= max_words and "
                "first_min_words <= first_max_words <= max_words, got "
                f"{self.first_min_words}, {self.first_max_words}, {self.clause_min_words}, "
                f"{self.max_words}"
            )


def _word_count(text: str) -> int:
    return len(_WORD.findall(text))


def _is_abbreviation(buf: str, dot: int) -> bool:
    """True when the "." at `dot` belongs to the word before it (Dr., e.g., J.)."""
    start = dot
    while start > 0 and not buf[start - 1].isspace():
        start -= 1
    word = buf[start:dot].lstrip("\"'([{“‘")
    if not word:
        return False
    if "." in word:  # e.g. / i.e. / U.S. / a.m.
        return True
    if len(word) == 1 and word.isalpha():  # an initial: "J. Smith"
        return True
    return word.lower() in ABBREVIATIONS


class ClauseChunker:
    """Feed tokens with push(); each call returns the chunks completed by that token.
    Call flush() at the end of the stream for the remainder. Chunks are stripped and
    always contain at least one letter or digit."""

    def __init__(self, policy: ChunkPolicy | None = None) -> None:
        self.policy = policy or ChunkPolicy()
        self._buf = ""
        self._scan = 0  # buffer index up to which no boundary can be found any more
        self.chunks_emitted = 0

    def push(self, token: str) -> list[str]:
        self._buf += token
        out: list[str] = []
        while (cut := self._find_cut()) is not None:
            chunk, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            self._scan = 0
            out.append(chunk)
            self.chunks_emitted += 1
        return out

    def flush(self) -> str | None:
        """The rest of the text, if any of it can be spoken; resets the chunker."""
        rest, self._buf, self._scan = self._buf.strip(), "", 0
        if not _SPEAKABLE.search(rest):
            return None
        self.chunks_emitted += 1
        return rest

    def reset(self) -> None:
        """Barge-in: forget the unspoken text and start over as a new answer."""
        self._buf, self._scan, self.chunks_emitted = "", 0, 0

    def _find_cut(self) -> int | None:
        buf, p = self._buf, self.policy
        first = self.chunks_emitted == 0
        i = self._scan
        while i < len(buf):
            ch = buf[i]
            if ch in _SENTENCE_END or ch in _CLAUSE_END:
                end = i + 1
                while end < len(buf) and (buf[end] in _CLOSERS or buf[end] in _SENTENCE_END):
                    end += 1
                if end == len(buf):  # need the next character to decide
                    self._scan = i
                    return self._overlong_cut()
                if buf[end].isspace() and _SPEAKABLE.search(buf[:i]):
                    words = _word_count(buf[:end])
                    if ch in _SENTENCE_END:
                        if ch != "." or not _is_abbreviation(buf, i):
                            return end
                    elif words >= (p.first_min_words if first else p.clause_min_words):
                        return end
                i = end
                continue
            i += 1
        self._scan = len(buf)
        return self._overlong_cut()

    def _overlong_cut(self) -> int | None:
        """A run-on sentence: cut at the last space once max_words are buffered
        (first_max_words for the first chunk)."""
        p = self.policy
        limit = p.first_max_words if self.chunks_emitted == 0 else p.max_words
        if _word_count(self._buf) < limit:
            return None
        if self._buf[-1].isspace():  # the last word is complete
            return len(self._buf)
        space = self._buf.rfind(" ")  # else it may still grow: keep it for the next chunk
        return space if space > 0 else None


# --- speech sanitizer --------------------------------------------------------------

# A line start that may still turn into a list marker, heading or quote.
_MAYBE_MARKER = re.compile(r"[ \t]*(?:[-*+•]|\d{1,3}[.)]?|#{1,6}|>)?")
_MARKER = re.compile(r"[ \t]*(?:[-*+•][ \t]+|\d{1,3}[.)][ \t]+|#{1,6}[ \t]+|>[ \t]*)")
_BARE_NUMBER = re.compile(r"\d{1,3}[.)]?")
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d\u20e3]")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
# Emphasis stars touching text ("**bold**", "*it*"); a lone "*" between spaces is the
# phone's star key and stays.
_EMPHASIS = re.compile(r"\*{1,3}(?=\S)|(?<=\S)\*{1,3}|~~|`+")
_SPACES = re.compile(r"\s+")


class SpeechSanitizer:
    """The line-level half of markdown stripping, done on the token stream: list
    markers, headings and quote marks at line starts go, newlines become sentence
    breaks (so list items are spoken as separate phrases), emoji go. Inline emphasis is
    removed per chunk by clean_inline(), where a "**" can no longer be split in two."""

    def __init__(self) -> None:
        self._line_start = True
        self._pending = ""  # text at a line start, held until the marker question is settled
        self._last = ""  # last non-space character emitted

    def feed(self, token: str) -> str:
        out: list[str] = []
        for line_i, part in enumerate(_EMOJI.sub("", token).split("\n")):
            if line_i > 0:
                out.append(self._end_line())
            if not part:
                continue
            if self._line_start:
                self._pending += part
                if _MAYBE_MARKER.fullmatch(self._pending):
                    continue
                marker = _MARKER.match(self._pending)
                part = self._pending[marker.end() :] if marker else self._pending
                self._pending = ""
                self._line_start = False
            out.append(self._emit(part))
        return "".join(out)

    def flush(self) -> str:
        return self._settle_pending()

    def _settle_pending(self) -> str:
        # A line that ended while it still looked like a marker: "-" or "#" is dropped,
        # a bare number ("42", "3.") is what was said.
        pending, self._pending, self._line_start = self._pending.strip(), "", True
        return self._emit(pending) if _BARE_NUMBER.fullmatch(pending) else ""

    def _end_line(self) -> str:
        text = self._settle_pending()
        if self._last and self._last not in _SENTENCE_END + _CLAUSE_END:
            self._last = "."
            return text + ". "
        return text + " "

    def _emit(self, text: str) -> str:
        stripped = text.rstrip()
        if stripped:
            self._last = stripped[-1]
        return text


def clean_inline(text: str) -> str:
    """Inline markdown out of one chunk: emphasis, code ticks, links, underscores."""
    text = _EMPHASIS.sub("", _LINK.sub(r"\1", text)).replace("_", " ")
    return _SPACES.sub(" ", text).strip()


def sanitize_for_speech(text: str) -> str:
    """Both halves at once, for whole strings (greetings, cached phrases)."""
    s = SpeechSanitizer()
    return clean_inline(s.feed(text) + s.flush())


def speech_chunks(tokens: Iterable[str], policy: ChunkPolicy | None = None) -> Iterator[str]:
    """Sanitize and chunk a whole token stream: the composition the conversation uses."""
    sanitizer, chunker = SpeechSanitizer(), ClauseChunker(policy)

    def cleaned(chunks: Iterable[str]) -> Iterator[str]:
        for chunk in chunks:
            if _SPEAKABLE.search(text := clean_inline(chunk)):
                yield text

    for token in tokens:
        yield from cleaned(chunker.push(sanitizer.feed(token)))
    yield from cleaned(chunker.push(sanitizer.flush()))
    if (rest := chunker.flush()) is not None:
        yield from cleaned([rest])
