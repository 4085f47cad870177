"""Digest authentication headers (sip.digest): WWW-/Proxy-Authenticate challenges as a
client reads them and Authorization credentials as the server checks them.

The documented error is DigestError. Each input line is one header value. Credentials
we build from a parsed challenge must print as text that parses back to them.
"""

from __future__ import annotations

from sip.digest import (
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    authorize,
    choose_challenge,
    parse_challenges,
)

MAX_LEN = 4096
SECRET = b"0123456789abcdef0123456789abcdef"


def _client(lines: list[str]) -> None:
    try:
        challenge = choose_challenge(parse_challenges(lines))
    except DigestError:
        return
    credentials = authorize(challenge, username="alice", password="secret",
                            method="INVITE", uri="sip:bob@example.com", cnonce="c0ffee")
    assert Credentials.parse(str(credentials)) == credentials


def _server(line: str) -> None:
    try:
        Challenge.parse(line)
    except DigestError:
        pass
    try:
        credentials = Credentials.parse(line)
    except DigestError:
        return
    server = DigestServer("switchboard", SECRET)  # fresh: it remembers nc per nonce
    server.verify(credentials, method="REGISTER", password="secret", now=1.0e9)
    server.verify(credentials, method="REGISTER", password=None, now=1.0e9, uri="sip:x")


def test_one_input(data: bytes) -> None:
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    _client(lines)
    for line in lines[:4]:
        _server(line)
