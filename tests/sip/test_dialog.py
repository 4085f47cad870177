"""Dialog: UAS creation from an INVITE, CSeq rules, target refresh, request building."""

from __future__ import annotations

import random

import pytest

from sip.dialog import Dialog, DialogError, DialogState
from sip.headers import Address
from sip.message import SipRequest
from sip.transport import Source, Target
from sip.uri import Uri

SRC_UDP = Source("udp", ("192.0.2.7", 5062), ("192.0.2.10", 5060))
SRC_TCP = Source("tcp", ("192.0.2.7", 40001), ("192.0.2.10", 5060), connection=5)
CONTACT = Address(Uri.parse("sip:switchboard@192.0.2.10:5060"))


def invite(record_route: str = "", contact: str = "<sip:alice@192.0.2.7:5062>") -> SipRequest:
    rr = f"Record-Route: {record_route}\r\n" if record_route else ""
    ct = f"Contact: {contact}\r\n" if contact else ""
    return SipRequest.parse((
        "INVITE sip:echo@192.0.2.10 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1\r\n"
        f"{rr}"
        'From: "Alice" <sip:alice@example.com>;tag=a1\r\n'
        "To: <sip:echo@192.0.2.10>\r\n"
        "Call-ID: c1@192.0.2.7\r\n"
        "CSeq: 10 INVITE\r\n"
        f"{ct}"
        "Content-Length: 0\r\n\r\n"
    ).encode())


def in_dialog(method: str, cseq: int, contact: str = "") -> SipRequest:
    ct = f"Contact: {contact}\r\n" if contact else ""
    return SipRequest.parse((
        f"{method} sip:switchboard@192.0.2.10 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK2\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:echo@192.0.2.10>;tag=b1\r\n"
        "Call-ID: c1@192.0.2.7\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{ct}"
        "Content-Length: 0\r\n\r\n"
    ).encode())


def make(req: SipRequest | None = None, source: Source = SRC_UDP) -> Dialog:
    return Dialog.from_request(req or invite(), source, local_tag="b1", local_contact=CONTACT,
                               rng=random.Random(3))


def test_uas_dialog_from_invite() -> None:
    d = make()
    assert d.id == ("c1@192.0.2.7", "b1", "a1")
    assert str(d.remote_target) == "sip:alice@192.0.2.7:5062"
    assert d.remote_cseq == 10 and 1 <= d.local_cseq < 2**16
    assert d.remote_uri.tag is None and d.local_uri.tag is None
    assert d.state is DialogState.EARLY
    assert d.next_hop() == Target("udp", "192.0.2.7", 5062)


def test_invite_without_contact_is_refused() -> None:
    with pytest.raises(DialogError) as err:
        make(invite(contact=""))
    assert err.value.status == 400


def test_bye_built_from_dialog() -> None:
    d = make()
    start = d.local_cseq
    bye = d.create_request("BYE")
    assert bye.method == "BYE" and str(bye.uri) == "sip:alice@192.0.2.7:5062"
    assert bye.cseq.seq == start + 1 and bye.cseq.method == "BYE"
    assert bye.from_addr.tag == "b1" and str(bye.from_addr.uri) == "sip:echo@192.0.2.10"
    assert bye.to_addr.tag == "a1" and bye.to_addr.display_name == "Alice"
    assert bye.call_id == "c1@192.0.2.7" and bye.routes == ()
    assert "Contact" not in bye.headers and "Via" not in bye.headers
    assert d.create_request("INFO").cseq.seq == start + 2


def test_reinvite_and_refer_carry_contact_and_body() -> None:
    d = make()
    reinvite = d.create_request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.contacts[0] == CONTACT
    assert reinvite.body == b"v=0\r\n" and str(reinvite.content_type) == "application/sdp"
    refer = d.create_request("REFER", extra=[("Refer-To", "<sip:bob@example.com>")])
    assert refer.header("Refer-To") == "<sip:bob@example.com>"
    ack = d.create_ack(reinvite.cseq.seq)
    assert ack.cseq.seq == reinvite.cseq.seq and ack.cseq.method == "ACK"
    assert d.local_cseq == refer.cseq.seq  # the ACK did not consume a number


def test_loose_route_set_in_record_route_order() -> None:
    d = make(invite("<sip:p1.example.com;lr>, <sip:p2.example.com:5070;lr;transport=tcp>"))
    bye = d.create_request("BYE")
    assert [str(r.uri) for r in bye.routes] == [
        "sip:p1.example.com;lr", "sip:p2.example.com:5070;lr;transport=tcp"]
    assert str(bye.uri) == "sip:alice@192.0.2.7:5062"
    assert d.next_hop() == Target("udp", "p1.example.com", 5060)


def test_strict_route_puts_remote_target_last() -> None:
    d = make(invite("<sip:strict.example.com;maddr=192.0.2.99>"))
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:strict.example.com"
    assert [str(r.uri) for r in bye.routes] == ["sip:alice@192.0.2.7:5062"]
    assert d.next_hop() == Target("udp", "192.0.2.99", 5060)


def test_tcp_dialog_prefers_its_connection() -> None:
    d = make(invite(contact="<sip:alice@192.0.2.7:5062;transport=tcp>"), SRC_TCP)
    assert d.next_hop() == Target("tcp", "192.0.2.7", 5062, 5)
    d = make(invite(contact="<sip:alice@192.0.2.7:5062;transport=udp>"), SRC_TCP)
    assert d.next_hop() == Target("udp", "192.0.2.7", 5062, None)


def test_remote_cseq_must_grow() -> None:
    d = make()
    d.check_request(in_dialog("INFO", 11))
    with pytest.raises(DialogError) as err:
        d.check_request(in_dialog("INFO", 11))
    assert err.value.status == 500
    with pytest.raises(DialogError, match="lower"):
        d.check_request(in_dialog("BYE", 5))
    d.check_request(in_dialog("ACK", 10))  # ACK keeps the INVITE's number
    d.check_request(in_dialog("BYE", 12))
    assert d.remote_cseq == 12


def test_reinvite_refreshes_remote_target() -> None:
    d = make()
    d.check_request(in_dialog("INFO", 11, contact="<sip:alice@198.51.100.1>"))
    assert str(d.remote_target) == "sip:alice@192.0.2.7:5062"  # INFO is no target refresh
    d.check_request(in_dialog("INVITE", 12, contact="<sip:alice@198.51.100.1:5080>"))
    assert d.next_hop() == Target("udp", "198.51.100.1", 5080)


def test_responses_carry_tag_and_contact_on_2xx_to_refresh() -> None:
    d = make()
    ok = d.response(in_dialog("INVITE", 11), 200, body=b"v=0\r\n",
                    content_type="application/sdp")
    assert ok.to_addr.tag == "b1" and ok.contacts == (CONTACT,)
    ok = d.response(in_dialog("BYE", 12), 200)
    assert "Contact" not in ok.headers and ok.to_addr.tag == "b1"


def test_terminated_dialog_refuses_new_requests_but_bye() -> None:
    d = make()
    d.terminate()
    with pytest.raises(DialogError):
        d.create_request("INFO")
    assert d.create_request("BYE").method == "BYE"
