"""No toll fraud (sip.policy): outbound INVITEs and our REFERs only to allowed targets,
and a REFER sent to us is never acted on. The real-server side (a foreign Request-URI
and Route are not relayed, POST /calls refused) is in tests/sip/test_hostile.py."""

from __future__ import annotations

import asyncio

import pytest

from sip.outbound import TargetNotAllowed
from sip.policy import TargetPolicy, listed_targets, same_target, target_uri
from sip.refer import TransferNotAllowed
from sip.registration import TrunkAccount
from sip.uri import Uri
from tests.sip import test_endpoint as ep
from tests.sip.test_outbound import Rig
from tests.sip.test_refer import answered, transfer
from tests.sip.test_transaction import settle

LOOPBACK = ("sip:*@127.0.0.1", "sip:*@localhost", "sip:*@::1")


def policy(**kw: object) -> TargetPolicy:
    kw.setdefault("trunk_hosts", ("trunk.example.com",))
    kw.setdefault("allowed", LOOPBACK)
    return TargetPolicy(**kw)  # type: ignore[arg-type]


def allowed(p: TargetPolicy, target: str) -> bool:
    uri = target_uri(target)
    assert uri is not None
    return p.allowed_target(uri)


def test_target_uri() -> None:
    assert target_uri("+1 555") is None
    assert target_uri("tel:+1-555-0100") == Uri("tel", user="+15550100")
    assert target_uri("sip:bob@example.com").host == "example.com"  # type: ignore[union-attr]


def test_numbers_go_through_the_trunk_unless_denied() -> None:
    p = policy(denied=("+1900*", "sip:*@evil.example"))
    assert allowed(p, "+15550100") and allowed(p, "sip:+15550100@trunk.example.com")
    assert not allowed(p, "+19005550100")
    assert not allowed(p, "sip:+19005550100@trunk.example.com")
    assert not allowed(p, "sip:alice@evil.example")
    # A number at someone else's host is a direct SIP call, not a trunk call.
    assert not allowed(p, "sip:+15550100@sip.elsewhere.example")


def test_numbers_off_then_only_allowed_prefixes() -> None:
    p = policy(numbers=False, allowed=("+4420*",))
    assert allowed(p, "+442071234567") and not allowed(p, "+15550100")


def test_direct_uris_only_when_allowed() -> None:
    p = policy(allowed=(*LOOPBACK, "sip:*@pbx.example.com", "sip:desk@10.0.0.5:5080"))
    assert allowed(p, "sip:echo@127.0.0.1:5070") and allowed(p, "sip:x@[::1]:5060")
    assert allowed(p, "sip:sales@PBX.example.com")
    assert allowed(p, "sip:desk@10.0.0.5:5080") and not allowed(p, "sip:desk@10.0.0.5")
    assert not allowed(p, "sip:anyone@192.0.2.66")
    assert not allowed(p, "sips:sales@pbx.example.com")
    assert not p.allowed_target(Uri.parse("sip:127.0.0.2"))  # no user: not in the patterns


def test_app_rules_extend_the_policy_but_not_past_denied() -> None:
    p = policy(denied=("sip:*@blocked.example",))
    assert not allowed(p, "sip:sales@pbx.example.com")
    p.add_rule(lambda uri: uri.host.endswith(".example.com") or uri.host == "blocked.example")
    assert allowed(p, "sip:sales@pbx.example.com")
    assert not allowed(p, "sip:x@blocked.example")


def test_listed_targets_follow_the_current_list() -> None:
    current = ["sip:operator@pbx.example.test", "+15550100"]
    p = policy(numbers=False, denied=("+1900*",))
    p.add_rule(listed_targets(lambda: current))
    assert allowed(p, "sip:operator@PBX.example.test;transport=tcp")  # params aside
    assert not allowed(p, "sip:operator@pbx.example.test:5070")  # another port
    assert not allowed(p, "sip:sales@pbx.example.test") and allowed(p, "tel:+1-555-0100")
    current[:] = ["+19005550100"]  # a reloaded plan; denied still wins
    assert not allowed(p, "sip:operator@pbx.example.test") and not allowed(p, "+19005550100")
    assert same_target(Uri.parse("sip:a@[::1]"), Uri.parse("sip:a@[::1];lr"))


# -- outbound INVITE ---------------------------------------------------------------------------


async def test_dialer_refuses_a_target_before_sending_anything() -> None:
    trunk = TrunkAccount("trunk.example.com", 5060, "alice", "pw")
    rig = Rig(trunk=trunk)
    rig.endpoint.targets = policy(denied=("+1900*",))
    for target in ("sip:bob@192.0.2.7:5062", "+19005550100"):
        with pytest.raises(TargetNotAllowed) as info:
            rig.start(target)
        assert info.value.status == 403
    assert rig.sent_count("INVITE") == 0
    assert rig.sample("switchboard_sip_targets_refused_total", kind="dial") == 2
    attempt, task = rig.start("+15550100")  # through the trunk: allowed
    await settle()
    assert rig.sent_count("INVITE") == 1 and attempt.dest.via_trunk
    task.cancel()
    await rig.close()


# -- our REFER ---------------------------------------------------------------------------------


async def test_transfer_to_a_target_not_allowed_sends_no_refer() -> None:
    rig = Rig()
    rig.endpoint.targets = policy(allowed=(*LOOPBACK, "sip:bob@192.0.2.7"))
    call, _ = await answered(rig)
    assert call.targets is rig.endpoint.targets  # outbound calls carry the policy
    with pytest.raises(TransferNotAllowed):
        await call.transfer("sip:premium@192.0.2.66")
    task = transfer(rig, call, "+19005550100", policy=policy(denied=("+1900*",)))
    with pytest.raises(TransferNotAllowed) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.outcome == "refused" and call.active
    assert rig.requests("REFER") == []
    assert rig.sample("switchboard_sip_targets_refused_total", kind="transfer") == 2
    assert rig.sample("switchboard_sip_transfers_total", outcome="refused") == 2
    allowed_task = transfer(rig, call, "sip:carol@127.0.0.1", policy=policy())
    await settle()
    assert len(rig.requests("REFER")) == 1
    allowed_task.cancel()
    await rig.close()


# -- a REFER sent to us ------------------------------------------------------------------------


def refer(target: str, **kw: object) -> str:
    return ep.msg("REFER", extra=f"Refer-To: {target}\nReferred-By: <sip:x@y>\n",
                  **kw)  # type: ignore[arg-type]


async def test_inbound_refer_is_never_acted_on() -> None:
    rig = ep.Rig()
    rig.endpoint.targets = policy()
    tag = await ep.answered(rig)
    sent = len(rig.wire.sent)
    rig.send(refer("<sip:+19005550100@198.51.100.1>", to_tag=tag, cseq=2, branch="z9hG4bKr1"))
    rig.send(refer("<sip:carol@127.0.0.1>", to_tag=tag, cseq=3, branch="z9hG4bKr2"))
    rig.send(refer("not a uri", to_tag=tag, cseq=4, branch="z9hG4bKr3"))
    rig.send(refer("<sip:+15550100@198.51.100.1>", branch="z9hG4bKr4", call_id="ood"))
    await settle()
    assert rig.wire.statuses("REFER") == [403, 501, 400, 403]
    assert rig.wire.responses("REFER")[0].reason == "Transfer Target Not Allowed"
    assert rig.wire.requests("INVITE") == []  # nothing called out
    assert all(isinstance(m, type(rig.wire.responses()[0])) for m in rig.wire.messages()[sent:])
    assert rig.sample("switchboard_sip_targets_refused_total", kind="refer") == 2
    assert rig.endpoint.calls and all(c.active for c in rig.endpoint.calls.values())
    await rig.close()


async def test_inbound_refer_without_a_policy_is_refused() -> None:
    rig = ep.Rig()
    tag = await ep.answered(rig)
    rig.send(refer("<sip:carol@127.0.0.1>", to_tag=tag, cseq=2, branch="z9hG4bKr1"))
    await settle()
    assert rig.wire.statuses("REFER") == [403]
    await rig.close()
