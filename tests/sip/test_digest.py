"""Digest authentication (sip.digest) against the RFC 2617 and RFC 7616 worked examples."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.digest import (
    AUTH_HEADERS,
    AuthResult,
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    authorization_for,
    authorize,
    choose_challenge,
    digest_response,
    parse_challenges,
)

# RFC 2617 3.5 (MD5, qop=auth)
RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
# RFC 7616 3.9.1 (SHA-256 and MD5 challenges for the same request)
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_LINES = [
    f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"',
    f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"',
]


def test_rfc2617_worked_example() -> None:
    challenge = Challenge.parse(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int") and challenge.algorithm == "MD5"
    credentials = authorize(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
        nc=1,
    )
    assert credentials.response == "6629fae49393a05397450978507c4ef1"
    assert str(credentials) == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, qop=auth, nc=00000001, '
        'cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert Credentials.parse(str(credentials)) == credentials


def test_rfc7616_prefers_sha256_and_matches_both_examples() -> None:
    challenges = parse_challenges(reversed(RFC7616_LINES))  # order must not matter
    chosen = choose_challenge(challenges)
    assert chosen.algorithm == "SHA-256" and chosen.opaque == RFC7616_OPAQUE
    expected = {
        "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    }
    for challenge in challenges:
        credentials = authorize(
            challenge,
            username="Mufasa",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            cnonce=RFC7616_CNONCE,
            nc=1,
        )
        assert credentials.response == expected[challenge.algorithm]
        assert f"algorithm={challenge.algorithm}," in str(credentials)


def test_several_challenges_in_one_line_with_other_schemes() -> None:
    line = (
        'Basic realm="x", Digest realm="a", nonce="1", algorithm=MD5, qop="auth", '
        'Digest realm="a", nonce="2", algorithm=SHA-256, qop="auth", Bearer realm="y"'
    )
    challenges = parse_challenges([line, "Digest garbage!!", "Digest realm=onlyrealm"])
    assert [(c.nonce, c.algorithm) for c in challenges] == [("1", "MD5"), ("2", "SHA-256")]
    assert choose_challenge(challenges).nonce == "2"


def test_unusable_challenges() -> None:
    auth_int = Challenge("r", "n", "MD5", ("auth-int",))
    unknown = Challenge("r", "n", "SHA-512-256", ("auth",))
    with pytest.raises(DigestError, match="no usable Digest challenge"):
        choose_challenge([auth_int, unknown])
    with pytest.raises(DigestError, match="none"):
        choose_challenge([])
    with pytest.raises(DigestError, match="cannot answer"):
        authorize(auth_int, username="u", password="p", method="REGISTER", uri="sip:x", cnonce="c")


def test_legacy_no_qop_and_sess_variants() -> None:
    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    legacy = authorize(
        Challenge("r", "n0nce"),
        username="u",
        password="p",
        method="REGISTER",
        uri="sip:example.com",
        cnonce="ignored",
    )
    assert legacy.qop is None and legacy.nc is None and legacy.cnonce is None
    assert legacy.response == h(f"{h('u:r:p')}:n0nce:{h('REGISTER:sip:example.com')}")
    assert "qop" not in str(legacy) and "nc=" not in str(legacy)

    sess = digest_response("MD5-sess", "u", "r", "p", "INVITE", "sip:b@h", "n", "auth", 2, "cn")
    ha1 = h(f"{h('u:r:p')}:n:cn")
    assert sess == h(f"{ha1}:n:00000002:cn:auth:{h('INVITE:sip:b@h')}")
    with pytest.raises(DigestError, match="unsupported Digest algorithm"):
        digest_response("SHA-1", "u", "r", "p", "INVITE", "sip:b@h", "n")


def test_challenge_str_round_trip() -> None:
    challenge = Challenge('re"alm', "abc", "SHA-256", ("auth",), "op", stale=True)
    text = str(challenge)
    assert text == 'Digest realm="re\\"alm", nonce="abc", opaque="op", stale=true, ' + (
        'algorithm=SHA-256, qop="auth"'
    )
    assert Challenge.parse(text) == challenge


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NoOneKnowsThisScheme opaque-data=here", "not Digest"),  # RFC 4475 regaut01
        ('Digest username="u", realm="r"', "without nonce, uri, response"),
        ('Digest username="u", username="v"', "duplicate"),
        ('Digest username="u", realm="r", nonce="n", uri="x", response="y", nc=1', "bad nc"),
        ('Digest username="u" realm="r"', "malformed auth parameter"),
        ('Digest username="unterminated', "malformed auth parameter"),
        ("", "not Digest"),
    ],
)
def test_bad_credentials(value: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        Credentials.parse(value)


@given(st.text(max_size=120))
@settings(max_examples=300, deadline=None)
def test_fuzz_only_digest_errors(value: str) -> None:
    parse_challenges([value])
    for text in (value, "Digest " + value):
        try:
            Credentials.parse(text)
        except DigestError:
            pass


def test_auth_header_names() -> None:
    assert AUTH_HEADERS[401] == ("WWW-Authenticate", "Authorization")
    assert AUTH_HEADERS[407] == ("Proxy-Authenticate", "Proxy-Authorization")


def test_authorization_for_a_407() -> None:
    name, credentials = authorization_for(
        407,
        RFC7616_LINES,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    assert name == "Proxy-Authorization" and credentials.algorithm == "SHA-256"
    assert credentials.response.startswith("753927fa")
    with pytest.raises(DigestError, match="not an authentication challenge"):
        authorization_for(
            403, RFC7616_LINES, username="u", password="p", method="GET", uri="/", cnonce="c"
        )


# --- server side -----------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"


def login(
    server: DigestServer,
    now: float,
    *,
    password: str = "s3cret",
    nc: int = 1,
    algorithm: str | None = None,
) -> Credentials:
    challenges = server.challenges(now)
    challenge = choose_challenge(
        [c for c in challenges if algorithm is None or c.algorithm == algorithm]
    )
    return authorize(
        challenge,
        username="alice",
        password=password,
        method="REGISTER",
        uri="sip:switchboard.example.com",
        cnonce="c0ffee",
        nc=nc,
    )


def answer(
    nonce: str,
    *,
    nc: int = 1,
    algorithm: str = "SHA-256",
    qop: tuple[str, ...] = ("auth",),
    uri: str = "sip:switchboard.example.com",
) -> Credentials:
    challenge = Challenge("switchboard", nonce, algorithm, qop)
    return authorize(
        challenge,
        username="alice",
        password="s3cret",
        method="REGISTER",
        uri=uri,
        cnonce="c",
        nc=nc,
    )


def check(server: DigestServer, credentials: Credentials, now: float, **kw: object) -> AuthResult:
    params: dict[str, object] = {"method": "REGISTER", "password": "s3cret", "now": now}
    params.update(kw)
    return server.verify(credentials, **params)  # type: ignore[arg-type]


def test_server_challenges_and_accepts() -> None:
    server = DigestServer("switchboard", SECRET)
    challenges = server.challenges(100.0)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert challenges[0].nonce == challenges[1].nonce and challenges[0].qop == ("auth",)
    assert "stale=true" in str(server.challenges(100.0, stale=True)[0])
    credentials = login(server, 100.0)
    assert credentials.algorithm == "SHA-256"
    assert check(server, credentials, 101.0, uri="sip:switchboard.example.com") is AuthResult.OK
    assert check(server, Credentials.parse(str(login(server, 5.0, algorithm="MD5"))), 6.0) is (
        AuthResult.OK
    )


def test_server_rejects_replays_but_accepts_higher_nc() -> None:
    server = DigestServer("switchboard", SECRET)
    first = login(server, 100.0)
    assert check(server, first, 100.5) is AuthResult.OK
    assert check(server, first, 100.6) is AuthResult.REPLAY
    assert check(server, answer(first.nonce, nc=3), 101.0) is AuthResult.OK
    assert check(server, answer(first.nonce, nc=2), 101.0) is AuthResult.REPLAY


def test_server_expires_nonces() -> None:
    server = DigestServer("switchboard", SECRET, nonce_ttl=30.0)
    credentials = login(server, 100.0)
    assert check(server, credentials, 129.9) is AuthResult.OK
    late = login(server, 100.0)
    assert check(server, late, 130.1) is AuthResult.STALE
    assert check(server, login(server, 100.0, password="wrong"), 131.0) is AuthResult.BAD_RESPONSE


def test_server_rejects_forged_and_foreign_nonces() -> None:
    server = DigestServer("switchboard", SECRET)
    good = login(server, 100.0)
    tampered = good.nonce[:-2] + ("BB" if good.nonce.endswith("AA") else "AA")
    for nonce in (tampered, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "!!!", ""):
        assert check(server, answer(nonce), 100.0) is AuthResult.BAD_NONCE, nonce
    other = DigestServer("switchboard", b"another secret of enough length")
    assert check(server, login(other, 100.0), 100.0) is AuthResult.BAD_NONCE
    assert check(server, login(server, 500.0), 100.0) is AuthResult.BAD_NONCE  # from the future


def test_server_wrong_password_unknown_user_and_mismatches() -> None:
    server = DigestServer("switchboard", SECRET, algorithms=("SHA-256",))
    assert check(server, login(server, 1.0, password="nope"), 1.0) is AuthResult.BAD_RESPONSE
    assert check(server, login(server, 1.0), 1.0, password=None) is AuthResult.BAD_RESPONSE
    assert check(server, login(server, 1.0), 1.0, method="INVITE") is AuthResult.BAD_RESPONSE
    assert check(server, login(server, 1.0), 1.0, uri="sip:other") is AuthResult.MISMATCH
    md5 = answer(server.new_nonce(1.0), algorithm="MD5")
    assert check(server, md5, 1.0) is AuthResult.MISMATCH
    other_realm = DigestServer("elsewhere", SECRET)
    assert check(server, login(other_realm, 1.0), 1.0) is AuthResult.MISMATCH


def test_server_accepts_legacy_no_qop() -> None:
    server = DigestServer("switchboard", SECRET, algorithms=("MD5",))
    legacy = answer(server.new_nonce(1.0), algorithm="MD5", qop=())
    assert legacy.qop is None and check(server, legacy, 2.0) is AuthResult.OK
    # Without nc a replay cannot be told from a retry: the nonce is good for one request.
    assert check(server, legacy, 3.0) is AuthResult.STALE


def test_server_memory_is_bounded() -> None:
    server = DigestServer("switchboard", SECRET, max_nonces=2)
    first, second, third = (login(server, t) for t in (1.0, 2.0, 3.0))
    for credentials in (first, second, third):
        assert check(server, credentials, 4.0) is AuthResult.OK
    # first was forgotten to make room: its replay cannot be told from a first use, so
    # the client is sent to get a fresh nonce rather than let in.
    assert check(server, first, 4.0) is AuthResult.STALE
    assert check(server, third, 4.0) is AuthResult.REPLAY


def test_server_config_errors() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        DigestServer("r", b"short")
    with pytest.raises(ValueError, match="unsupported algorithms"):
        DigestServer("r", SECRET, algorithms=("SHA-512",))
