"""Twilio REST call control (the real twilio client, its HTTP layer replaced by a recorder
that answers like the API), and the Twilio leg's hang-up and transfer through it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import pytest
from twilio.http import HttpClient
from twilio.http.response import Response

from pipeline.leg import TransferError
from streams.twilio import TwilioSettings
from streams.twilio_messages import Dtmf
from streams.twilio_rest import TwilioCalls, TwilioRestError, dial_twiml
from tests.streams.conftest import Harness, Speaker, until
from tests.streams.test_twilio import CALL, SID, make_rig

TOKEN = "0123456789abcdef0123456789abcdef"
API_ACCOUNT = "AC" + "1" * 32


class FakeApi(HttpClient):
    """Answers Call updates as the API does; `status` forces an error."""

    def __init__(self, status: int = 200) -> None:
        super().__init__(logging.getLogger("fake-twilio"), is_async=False, timeout=5)
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.threads: set[str] = set()

    def request(self, method: str, uri: str, params: Any = None, data: Any = None,
                headers: Any = None, auth: Any = None, timeout: Any = None,
                allow_redirects: bool = False) -> Response:
        self.threads.add(threading.current_thread().name)
        self.requests.append({"method": method, "uri": uri, "data": dict(data or {}),
                              "auth": auth})
        if self.status >= 400:
            body = {"code": 20404, "message": "The requested resource was not found",
                    "status": self.status}
            return Response(self.status, json.dumps(body))
        sid = uri.rsplit("/", 1)[-1].removesuffix(".json")
        return Response(200, json.dumps({"sid": sid, "account_sid": API_ACCOUNT,
                                         "status": "completed"}))


async def test_hangup_and_transfer_requests() -> None:
    api = FakeApi()
    calls = TwilioCalls(API_ACCOUNT, TOKEN, http_client=api)
    await calls.hangup(CALL)
    await calls.transfer(CALL, "+15550003333")
    await calls.transfer(CALL, "sip:desk@pbx.example.com")
    hangup, number, sip = api.requests
    assert hangup["method"] == "POST"
    assert hangup["uri"].endswith(f"/2010-04-01/Accounts/{API_ACCOUNT}/Calls/{CALL}.json")
    assert hangup["data"] == {"Status": "completed"}
    assert hangup["auth"] == (API_ACCOUNT, TOKEN)
    assert "<Dial>+15550003333</Dial>" in number["data"]["Twiml"]
    assert "<Sip>sip:desk@pbx.example.com</Sip>" in sip["data"]["Twiml"]
    assert threading.current_thread().name not in api.threads  # never on the event loop


async def test_errors() -> None:
    calls = TwilioCalls(API_ACCOUNT, TOKEN, http_client=FakeApi(status=404))
    with pytest.raises(TwilioRestError, match="refused the call update"):
        await calls.hangup(CALL)
    with pytest.raises(TransferError, match="refused the call update"):
        await calls.transfer(CALL, "+15550003333")
    with pytest.raises(TransferError, match="phone number or a sip: URI"):
        await calls.transfer(CALL, "<Play>http://evil</Play>")
    with pytest.raises(TwilioRestError, match="not a Twilio call SID"):
        await calls.hangup("CA../../Accounts")
    with pytest.raises(ValueError, match="both an account SID and an auth token"):
        TwilioCalls("", TOKEN)
    assert dial_twiml("1234").endswith("<Dial>1234</Dial></Response>")


class Transferring(Speaker):
    """Transfers the call on '1', hangs up on '2'."""

    def on_dtmf(self, digit: str) -> None:
        assert self.leg is not None
        action = self.leg.transfer("+15550003333") if digit == "1" else self.leg.hangup("bye")
        self.task = asyncio.get_running_loop().create_task(action)


@pytest.mark.parametrize(("digit", "outcome", "field"), [("1", "transfer", "Twiml"),
                                                         ("2", "hangup", "Status")])
async def test_leg_control_through_rest(harness: Harness, digit: str, outcome: str,
                                        field: str) -> None:
    api = FakeApi()
    agent = Transferring([])
    harness._factory = lambda info: agent
    settings = TwilioSettings(rest=TwilioCalls(API_ACCOUNT, TOKEN, http_client=api))
    async with make_rig(harness, settings) as rig:
        peer = await rig.connect(signature=None)
        await peer.start()
        await until(lambda: agent.leg is not None)
        await rig.frame(peer, b"\xff" * 160)
        await peer.send(Dtmf(SID, peer.seq + 1, digit))
        await until(lambda: peer.ws.closed)
        assert agent.ended == outcome
        assert [set(r["data"]) for r in api.requests] == [{field}]
        # The client sees the close frame before the server has finished the call.
        await until(lambda: harness.value("switchboard_calls_total", transport="twilio",
                                          outcome=outcome) == 1)


async def test_transfer_without_credentials_is_refused(harness: Harness) -> None:
    agent = Speaker([])
    harness._factory = lambda info: agent
    async with make_rig(harness, TwilioSettings()) as rig:
        peer = await rig.connect(signature=None)
        await peer.start()
        await until(lambda: agent.leg is not None)
        with pytest.raises(TransferError, match="account_sid and auth_token"):
            await agent.leg.transfer("+15550003333")  # type: ignore[union-attr]
        await agent.leg.hangup()  # type: ignore[union-attr]  # no REST: closes the stream
        await until(lambda: peer.ws.closed)
        assert peer.ws.close_code == 1000
        await peer.ws.close()
