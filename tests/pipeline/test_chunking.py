from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chunking import (
    ChunkPolicy,
    ClauseChunker,
    SpeechSanitizer,
    clean_inline,
    sanitize_for_speech,
    speech_chunks,
)


def chunk_all(tokens: list[str], policy: ChunkPolicy | None = None) -> list[str]:
    c = ClauseChunker(policy)
    out = [chunk for t in tokens for chunk in c.push(t)]
    if (rest := c.flush()) is not None:
        out.append(rest)
    return out


def by_chars(text: str) -> list[str]:
    return list(text)


def test_first_chunk_at_clause_after_enough_words() -> None:
    text = "Sure, I can help you with that, and then we can talk about the rest of it."
    assert chunk_all(by_chars(text)) == [
        "Sure, I can help you with that,",
        "and then we can talk about the rest of it.",
    ]


def test_first_chunk_at_short_sentence_end() -> None:
    assert chunk_all(by_chars("Yes. Your table is booked for Friday, at eight.")) == [
        "Yes.",
        "Your table is booked for Friday, at eight.",
    ]


def test_later_chunks_only_at_sentence_ends_unless_long() -> None:
    text = "Hello there. We open at nine, close at five, and on weekends we open late. Thanks."
    assert chunk_all(by_chars(text)) == [
        "Hello there.",
        "We open at nine, close at five, and on weekends we open late.",
        "Thanks.",
    ]


def test_long_sentence_cut_at_a_clause() -> None:
    text = (
        "First. The order includes one large pizza with extra cheese and a side of garlic "
        "bread, two bottles of water, and a dessert."
    )
    chunks = chunk_all(by_chars(text))
    assert chunks[1].endswith("garlic bread,")
    assert chunks[2] == "two bottles of water, and a dessert."


def test_run_on_cut_at_a_space() -> None:
    words = [f"w{i}" for i in range(70)]
    chunks = chunk_all([w + " " for w in words], ChunkPolicy(first_max_words=30, max_words=30))
    assert [len(c.split()) for c in chunks] == [30, 30, 10]
    assert " ".join(chunks).split() == words


def test_a_long_first_sentence_is_cut_early_so_speech_starts_soon() -> None:
    text = ("We are open from nine in the morning until five in the evening on every "
            "weekday and Saturday. Call again.")
    chunks = chunk_all([w + " " for w in text.split()], ChunkPolicy(first_max_words=8))
    assert chunks[0] == "We are open from nine in the morning"
    assert chunks[1] == "until five in the evening on every weekday and Saturday."
    assert " ".join(chunks).split() == text.split()


@pytest.mark.parametrize(
    ("text", "whole"),
    [
        ("The rate is 3.5 percent for you. Okay.", "3.5 percent"),
        ("It costs 1,000 dollars, more or less. Okay.", "1,000 dollars"),
        ("Come at 3:30 in the afternoon, please. Okay.", "3:30 in"),
        ("Ask for Dr. Smith at the front desk. Okay.", "Dr. Smith"),
        ("Bring an ID, e.g. a passport or a licence. Okay.", "e.g. a passport"),
        ("Mr. J. Watson will call you. Okay.", "Mr. J. Watson"),
        ("Use the web site, i.e. the portal, to book. Okay.", "i.e. the portal"),
    ],
)
def test_never_splits_numbers_or_abbreviations(text: str, whole: str) -> None:
    chunks = chunk_all(by_chars(text))
    assert any(whole in c for c in chunks), chunks
    assert chunks[-1] == "Okay."
    assert " ".join(chunks) == text


def test_waits_for_the_character_after_a_dot() -> None:
    c = ClauseChunker()
    assert c.push("It is 3.") == []
    assert c.push("5 now. ") == ["It is 3.5 now."]


def test_question_and_exclamation_with_closers() -> None:
    assert chunk_all(by_chars('He said "hi!" Then left? Yes!')) == [
        'He said "hi!"',
        "Then left?",
        "Yes!",
    ]


def test_punctuation_only_is_never_a_chunk() -> None:
    assert chunk_all(["... ", "!! ", "  "]) == []
    assert chunk_all(["... Hello. "]) == ["... Hello."]


def test_reset_forgets_text_and_restarts_first_chunk_rule() -> None:
    c = ClauseChunker()
    assert c.push("One. Two words, then") == ["One."]
    c.reset()
    assert c.chunks_emitted == 0
    assert c.push("Then, we go on again. ") == ["Then, we go on again."]


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="first_min_words"):
        ChunkPolicy(first_min_words=5, clause_min_words=3)


_words = st.sampled_from(
    ["hello", "3.5", "Dr.", "e.g.", "1,000", "3:30", "yes", "the", "price", "J.", "ok", "42"]
)
_punct = st.sampled_from(["", "", "", ",", ".", "!", "?", ";", "...", '."'])
_text = st.lists(st.tuples(_words, _punct), min_size=1, max_size=60).map(
    lambda parts: " ".join(w + p for w, p in parts)
)


def _splits(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    edges = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=200, deadline=None)
@given(_text, st.lists(st.integers(min_value=0), max_size=30))
def test_chunks_keep_every_word_in_order(text: str, cuts: list[int]) -> None:
    chunks = chunk_all(_splits(text, cuts))
    assert " ".join(chunks).split() == text.split() or not re.search(r"\w", text)
    assert all(re.search(r"\w", c) and c == c.strip() for c in chunks)


@settings(max_examples=200, deadline=None)
@given(_text, st.lists(st.integers(min_value=0), max_size=30))
def test_chunks_do_not_depend_on_token_boundaries(text: str, cuts: list[int]) -> None:
    # the run-on cuts are the one timing-dependent rule
    policy = ChunkPolicy(first_max_words=10_000, max_words=10_000)
    assert chunk_all(_splits(text, cuts), policy) == chunk_all([text], policy)


# --- sanitizer --------------------------------------------------------------------


def sanitize_stream(tokens: list[str]) -> str:
    s = SpeechSanitizer()
    return clean_inline("".join(s.feed(t) for t in tokens) + s.flush())


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Sure!** I can *help* with `that`.", "Sure! I can help with that."),
        ("Options:\n- apples\n- pears\n", "Options: apples. pears."),
        ("Steps:\n1. Call us\n2) Book\n", "Steps: Call us. Book."),
        ("## Opening hours\nWe open at 9", "Opening hours. We open at 9"),
        ("> quoted text", "quoted text"),
        ("Great 😀👍 news ✅!", "Great news !"),
        ("See [our site](https://example.com) now.", "See our site now."),
        ("Press * then # to finish.", "Press * then # to finish."),
        ("12 people and 3.5 hours", "12 people and 3.5 hours"),
        ("The answer is:\n42", "The answer is: 42"),
        ("snake_case and __bold__", "snake case and bold"),
        ("~~old~~ new", "old new"),
    ],
)
def test_sanitizer(raw: str, spoken: str) -> None:
    assert sanitize_for_speech(raw) == spoken
    assert sanitize_stream(list(raw)) == spoken  # the same when streamed char by char


def test_speech_chunks_composes_sanitizer_and_chunker() -> None:
    tokens = ["**Sure", "**,", " I can", " book", " that", " for you", ". ", "\n- Fri", "day\n"]
    assert list(speech_chunks(tokens)) == ["Sure, I can book that for you.", "Friday."]
