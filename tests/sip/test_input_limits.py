"""Size limits on SIP, SDP and RTP input, and strict RTP latching. Each oversized input
gets its specific answer (413/513) or is counted and dropped, and the next good input
still works. (WebSocket messages and AudioSocket frames: tests/streams, close 1009 and
"too_large"; the running-server side: tests/sip/test_hostile.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest

from media.rtp import RtpPacket
from sip.message import Limits
from sip.sdp import MAX_MEDIA, MAX_SDP_BYTES, SdpError, SessionDescription
from switchboard.app import _sip_server_config
from switchboard.config import load_config
from tests.sip import test_endpoint as ep
from tests.sip.test_rtp_session import (  # noqa: F401  (make_call is a fixture)
    PCMU_SILENCE,
    Call,
    make_call,
    recv_rtp,
    udp_socket,
)
from tests.sip.test_transaction import settle

# -- SDP -------------------------------------------------------------------------------------


def big_offer(size: int) -> str:
    padding = "".join(f"a=x-pad{i}:{'p' * 60}\r\n" for i in range(size // 70 + 1))
    return ep.PCMU_OFFER.format(direction="sendrecv") + padding


def test_sdp_parser_limits() -> None:
    with pytest.raises(SdpError, match="exceeds"):
        SessionDescription.parse(big_offer(MAX_SDP_BYTES).encode())
    many = ep.PCMU_OFFER.format(direction="sendrecv") + "m=audio 7000 RTP/AVP 0\r\n" * MAX_MEDIA
    with pytest.raises(SdpError, match="media sections"):
        SessionDescription.parse(many)


async def test_oversized_sdp_gets_413_and_the_endpoint_carries_on() -> None:
    rig = ep.Rig()
    rig.send(ep.invite(body=big_offer(MAX_SDP_BYTES)))
    await settle()
    assert rig.wire.statuses("INVITE")[-1] == 413 and rig.media == []
    assert rig.sample("switchboard_calls_rejected_total", transport="sip",
                      reason="too_large") == 1
    rig.send(ep.msg("ACK", to_tag=rig.wire.responses("INVITE")[-1].to_addr.tag or ""))
    tag = await ep.answered(rig, call_id="c2", branch="z9hG4bKok")
    # In a call: a huge re-INVITE offer is refused and the call goes on as it was.
    rig.send(ep.invite(body=big_offer(MAX_SDP_BYTES), to_tag=tag, cseq=2, call_id="c2",
                       branch="z9hG4bKr1"))
    await settle()
    assert rig.wire.statuses("INVITE")[-1] == 413
    assert all(c.active for c in rig.endpoint.calls.values()) and len(rig.endpoint.calls) == 1
    await rig.close()


# -- SIP ---------------------------------------------------------------------------------------


def test_flood_config_maps_to_limits() -> None:
    limits = _sip_server_config(load_config(None, {
        "SWITCHBOARD_SIP__TRUSTED_NETWORKS": "[10.1.0.0/16]",
        "SWITCHBOARD_SIP__FLOOD__INVITE_BURST": "7"}).sip).flood
    assert limits.exempt_networks == ("127.0.0.1/32", "::1/128", "10.1.0.0/16")
    assert limits.rates["INVITE"].burst == 7 and limits.rates["OPTIONS"].per_second == 10
    assert limits.rates["malformed"].burst == 20
    strict = _sip_server_config(load_config(None, {
        "SWITCHBOARD_SIP__FLOOD__EXEMPT_TRUSTED": "false",
        "SWITCHBOARD_SIP__FLOOD__EXEMPT_NETWORKS": "[]"}).sip).flood
    assert strict.exempt_networks == ()


def test_max_message_bytes_is_configurable() -> None:
    config = load_config(None, {"SWITCHBOARD_SIP__MAX_MESSAGE_BYTES": "8192"})
    assert _sip_server_config(config.sip).limits == Limits(max_message=8192)
    assert _sip_server_config(load_config(None, {}).sip).limits.max_message == 65536


async def test_oversized_sip_is_dropped_or_answered_513_and_counted() -> None:
    rig = ep.Rig()
    rig.wire.limits = Limits(max_message=4096)
    rig.send(ep.msg("OPTIONS", extra="X-Pad: " + "p" * 5000 + "\n"))  # whole message too big
    assert rig.wire.sent == []  # cannot be answered safely: dropped
    rig.wire.limits = Limits(max_line=1024)
    rig.send(ep.msg("OPTIONS", extra="X-Pad: " + "p" * 2000 + "\n", branch="z9hG4bKl"))
    rig.send(ep.msg("OPTIONS", extra="".join(f"X-H{i}: v\n" for i in range(200)),
                    branch="z9hG4bKh"))
    assert rig.wire.statuses() == [513, 513]
    assert rig.sample("switchboard_sip_parse_errors_total", transport="udp") == 3
    rig.send(ep.msg("OPTIONS", branch="z9hG4bKgood"))
    assert rig.wire.statuses() == [513, 513, 200]
    await rig.close()


# -- RTP -----------------------------------------------------------------------------------------


async def test_oversized_rtp_is_counted_and_dropped(make_call) -> None:  # noqa: F811
    call: Call = await make_call()
    huge = bytes(RtpPacket(0, call.seq, call.ts, 0x1234, b"\xff" * 3000))
    await call.deliver(huge)
    await call.deliver(call.packet())  # the next good packet is taken
    assert call.invalid("too_large") == 1 and call.session.stats.packets_in == 1
    rtcp = b"\x81\xc9" + bytes(4000)
    await call.deliver(rtcp, sock=call.rtcp_peer, port=call.addr[1] + 1)
    await call.deliver(rtcp, sock=call.rtcp_peer)
    await call.deliver(call.packet())
    assert call.invalid("too_large") == 3 and call.session.stats.packets_in == 2


async def test_strict_latching_drops_a_second_sender_even_one_continuing_the_stream(
        make_call) -> None:  # noqa: F811
    call: Call = await make_call()
    await call.deliver(call.packet())
    call.tick(110)  # past the 2 s learning window
    await call.deliver(call.packet())
    second = udp_socket()
    try:
        for _ in range(5):  # same SSRC, next sequence numbers: what a hijacker would try
            await call.deliver(call.packet(), sock=second)
        await call.deliver(call.packet(ssrc=0x6666), sock=second)
        assert call.invalid("source") == 6 and call.session.stats.packets_in == 2
        recv_rtp(call.peer)
        call.tick()
        assert len(recv_rtp(call.peer)) == 1 and recv_rtp(second) == []
        # A re-INVITE that moves the media to the second address: it is taken from now on.
        port = second.getsockname()[1]
        call.session.update(replace(call.session.params, remote_port=port, rtcp_port=port + 1))
        await call.deliver(call.packet(), sock=second)
        assert call.session.stats.packets_in == 3
        call.tick()
        assert len(recv_rtp(second)) == 1
        await call.deliver(call.packet())  # the old address is now the stranger
        assert call.invalid("source") == 7
    finally:
        second.close()

