"""Header values, URIs and the lexical helpers: sip.grammar, sip.uri, sip.headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.grammar import Params, SipParseError, parse_quoted, parse_uint, quote, split_outside
from sip.headers import Address, CSeq, Headers, MediaType, Via, canonical_name
from sip.uri import Uri, bare_host

# --- grammar ---------------------------------------------------------------------------


def test_quoted_string_unescapes_pairs() -> None:
    text = r'"J Rosenberg \\\"" <sip:x@y>'
    value, end = parse_quoted(text, 0)
    assert value == 'J Rosenberg \\"'
    assert text[end:] == " <sip:x@y>"


def test_unterminated_quote_is_an_error() -> None:
    with pytest.raises(SipParseError, match="unterminated quoted string"):
        parse_quoted('"Mr. J. User <sip:j.user@example.com>', 0)


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_quote_round_trips(text: str) -> None:
    assert parse_quoted(quote(text), 0) == (text, len(quote(text)))


def test_split_outside_respects_quotes_and_brackets() -> None:
    assert split_outside('"a,b" <sip:x;p=1,2>, c', ",") == ['"a,b" <sip:x;p=1,2>', " c"]
    with pytest.raises(SipParseError, match="unclosed '<'"):
        split_outside("<sip:x, y", ",")


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("0068", 68), ("255", 255), ("000000000000255", 255)]
)
def test_parse_uint_accepts_leading_zeros(text: str, value: int) -> None:
    assert parse_uint(text, "Max-Forwards", 255) == value


@pytest.mark.parametrize("text", ["", "-1", " 7", "1_0", "٣", "+5", "0x10"])
def test_parse_uint_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(SipParseError, match="not a number"):
        parse_uint(text, "Max-Forwards", 255)


def test_parse_uint_bounds() -> None:
    with pytest.raises(SipParseError, match="Max-Forwards out of range"):
        parse_uint("256", "Max-Forwards", 255)
    with pytest.raises(SipParseError, match="out of range"):
        parse_uint("9" * 5000, "CSeq number", 2**31 - 1)


def test_params_with_lws_quotes_and_flags() -> None:
    params = Params.parse(' ; newparam =  newvalue ; secondparam ; q = 0.33;x="a b;c"')
    assert params.get("NEWPARAM") == "newvalue"
    assert params.get("secondparam") == "" and "secondparam" in params
    assert params.get("missing") is None and "missing" not in params
    assert params.get("q") == "0.33"
    assert params.get("x") == "a b;c"
    assert str(params) == ';newparam=newvalue;secondparam;q=0.33;x="a b;c"'


@pytest.mark.parametrize("text", [";;", ";a=", "; =b", ";a=b c", "tag=1", ';a="x"y'])
def test_params_reject_empty_or_junk(text: str) -> None:
    with pytest.raises(SipParseError):
        Params.parse(text)


def test_params_edit() -> None:
    params = Params.parse(";branch=z9hG4bK1;rport")
    assert str(params.with_param("RPORT", "5060")) == ";branch=z9hG4bK1;rport=5060"
    assert str(params.with_param("received", "10.0.0.1")).endswith(";received=10.0.0.1")
    assert str(params.without("Branch")) == ";rport"


# --- URIs ------------------------------------------------------------------------------


def test_sip_uri_parts() -> None:
    uri = Uri.parse("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi%20there")
    assert (uri.scheme, uri.user, uri.password) == ("sips", "alice", "secret")
    assert (uri.host, uri.port, bare_host(uri.host)) == ("[2001:db8::1]", 5061, "2001:db8::1")
    assert uri.transport == "tcp" and uri.lr and uri.maddr is None
    assert uri.headers == (("subject", "hi there"),)
    assert str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi%20there"
    assert uri.host_port == "[2001:db8::1]:5061"


def test_uri_unescapes_and_reescapes() -> None:
    uri = Uri.parse("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips:user@example.com" and uri.host == "example.net"
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"
    assert Uri.parse("sip:%75se%72@example.com").user == "user"
    assert Uri.parse("sip:null-%00-null@example.com").user == "null-\x00-null"
    contact = Uri.parse("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert contact.user == "caller" and contact.lr
    assert contact.params.get("name") == "value%41"  # unescaped once, never twice


def test_uri_user_may_hold_semicolons_and_question_marks() -> None:
    uri = Uri.parse("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net" and uri.host == "example.com"
    assert len(uri.params) == 0


def test_tel_and_opaque_uris() -> None:
    tel = Uri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert tel.user == "+1-201-555-0123" and tel.params.get("phone-context") == "example.com"
    assert str(tel) == "tel:+1-201-555-0123;phone-context=example.com"
    isbn = Uri.parse("isbn:2983792873")
    assert isbn.opaque == "2983792873" and not isbn.is_sip and str(isbn) == "isbn:2983792873"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<sip:user@example.com>", "no scheme"),
        (" sip:t.watson@example.org ", "no scheme"),
        ("sip:user@exa mple.com", "whitespace"),
        ("sip:user@", "bad URI host"),
        ("sip:@host", "empty user"),
        ("sip:host:99999", "port out of range"),
        ("sip:host:5o60", "not a number"),
        ("sip:[2001:db8::zz]", "bad IPv6"),
        ("sip:[::1", "unclosed IPv6"),
        ("sip:host;;lr", "empty URI parameter"),
        ("sip:host?novalue", "bad URI header"),
        ("tel:", "empty URI"),
    ],
)
def test_bad_uris(text: str, reason: str) -> None:
    with pytest.raises(SipParseError, match=reason):
        Uri.parse(text)


@given(
    user=st.text(min_size=1, max_size=12),
    param=st.text(min_size=1, max_size=8),
    port=st.none() | st.integers(1, 65535),
)
@settings(max_examples=200, deadline=None)
def test_uri_str_parse_round_trip(user: str, param: str, port: int | None) -> None:
    uri = Uri("sip", "example.com", user, None, port, Params((("x", param),)))
    assert Uri.parse(str(uri)) == uri


# --- Via -------------------------------------------------------------------------------


def test_via_tortuous_spacing() -> None:
    via = Via.parse("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
    assert (via.transport, via.host, via.port, via.branch) == (
        "TCP",
        "spindle.example.com",
        None,
        "z9hG4bK9ikj8",
    )
    assert str(via) == "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8"


def test_via_rport_and_received() -> None:
    via = Via.parse("SIP/2.0/udp 10.0.0.2:5062;branch=z9hG4bKx;rport")
    assert via.transport == "UDP" and via.port == 5062 and via.has_rport and via.rport is None
    answered = via.with_received("203.0.113.7", 40000)
    assert (
        str(answered)
        == "SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKx;rport=40000;received=203.0.113.7"
    )
    assert answered.rport == 40000 and answered.received == "203.0.113.7"
    plain = Via.parse("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKy")
    assert plain.host == "[2001:db8::9]" and not plain.has_rport
    assert "rport" not in plain.with_received("2001:db8::9", 5060).params


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP host",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP host:port",
        "SIP/2.0/UDP ho st;branch=x",
        "HTTP/2.0/UDP host",
    ],
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


# --- name-addr -------------------------------------------------------------------------


def test_address_forms() -> None:
    quoted = Address.parse('"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue')
    assert quoted.display_name == 'Quoted string ""' and quoted.params.get("newparam") == "newvalue"
    tokens = Address.parse("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=_t~1")
    assert tokens.display_name == "token1~` token2'+_ token3*%!.-" and tokens.tag == "_t~1"
    no_space = Address.parse("caller<sip:caller@example.com>;tag=323")
    assert no_space.display_name == "caller" and no_space.uri.user == "caller"
    spec = Address.parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert spec.display_name is None and spec.tag == "1918181833n" and len(spec.uri.params) == 0
    bracketed = Address.parse("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert "unknownparam" in bracketed.uri.params and len(bracketed.params) == 0
    bare = Address.parse("sip:+19725552222@gw1.example.net;unknownparam")
    assert "unknownparam" in bare.params and len(bare.uri.params) == 0


def test_address_str_and_tag() -> None:
    address = Address.parse("Bob <sip:bob@biloxi.example.com>")
    assert str(address.with_tag("a6c85cf")) == '"Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf'
    assert Address.parse(str(address)) == address
    assert str(Address(Uri.parse("sip:x@y"))) == "<sip:x@y>"


def test_contact_expires_is_clamped() -> None:
    assert Address.parse("<sip:a@b>;expires=3600").expires == 3600
    assert Address.parse("<sip:a@b>;expires=280297596632815").expires == 2**32 - 1
    assert Address.parse("<sip:a@b>").expires is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", "display name"),
        ('"Watson, Thomas" < sip:t.watson@example.org >', "no scheme"),
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "enclosed in <>"),
        ('"Joe" <sip:joe@example.org>;;;;', "bad parameter name"),
        ('"Mr. J. User <sip:j.user@example.com>', "unterminated"),
        ('"Joe" sip:joe@example.org', "not followed by <URI>"),
        ("<sip:joe@example.org", "missing '>'"),
        ("<sip:joe@example.org> tag=1", "expected ';'"),
        ("", "empty address"),
    ],
)
def test_bad_addresses(text: str, reason: str) -> None:
    with pytest.raises(SipParseError, match=reason):
        Address.parse(text)


# --- CSeq, Content-Type ----------------------------------------------------------------


def test_cseq() -> None:
    assert CSeq.parse("0009  INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(314159, "INVITE")) == "314159 INVITE"
    for bad in ("INVITE", "1 2 3", "2147483648 INVITE", "36893488147419103232 REGISTER", "1 IN<"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


def test_media_type() -> None:
    media = MediaType.parse('Multipart/Mixed ; boundary="++"')
    assert media.mime == "multipart/mixed" and media.params.get("boundary") == "++"
    with pytest.raises(SipParseError, match="bad Content-Type"):
        MediaType.parse("application")


# --- Headers ---------------------------------------------------------------------------


def test_canonical_names() -> None:
    assert canonical_name("i") == "Call-ID" and canonical_name("I") == "Call-ID"
    assert (
        canonical_name("cseq") == "CSeq"
        and canonical_name("WWW-AUTHENTICATE") == "WWW-Authenticate"
    )
    assert canonical_name("X-Custom") == "X-Custom"
    assert canonical_name("C%6Fntact") == "C%6Fntact"  # not an escape in a header name


def test_headers_lookup_split_and_edit() -> None:
    headers = Headers(
        [
            ("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP c;branch=z9hG4bK3"),
            ("WWW-Authenticate", 'Digest realm="a, b", nonce="x", qop="auth,auth-int"'),
            ("Contact", '"Doe, J" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>'),
            ("Allow", "INVITE, ACK,BYE"),
        ]
    )
    assert headers.get_all("VIA") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1",
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP c;branch=z9hG4bK3",
    ]
    assert len(headers.get_all("www-authenticate")) == 1  # never split
    assert headers.get_all("m") == ['"Doe, J" <sip:j@x;a=1,2>;q=0.5', "<sip:k@y>"]
    assert headers.get_tokens("Allow") == ("INVITE", "ACK", "BYE")
    assert headers.get("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"
    assert "contact" in headers and "Route" not in headers

    top = headers.with_header("Via", "SIP/2.0/TCP new;branch=z9hG4bK0", top=True)
    assert next(iter(top)) == ("Via", "SIP/2.0/TCP new;branch=z9hG4bK0")
    replaced = headers.with_replaced("via", "SIP/2.0/UDP only")
    assert replaced.get_lines("Via") == ["SIP/2.0/UDP only"] and next(iter(replaced))[0] == "Via"
    assert headers.with_replaced("Subject", "hi").get("s") == "hi"
    assert "Via" not in headers.without("V") and len(headers.without("V")) == 3
    assert len(headers) == 5  # the original is untouched


def test_headers_reject_injection() -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        Headers([("Subject", "hi\r\nVia: evil")])
    with pytest.raises(ValueError, match="bad header name"):
        Headers([("Bad Name", "x")])
