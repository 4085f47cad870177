"""The calls API is never open to the world: a token when configured, else loopback only."""

from __future__ import annotations

from typing import Any
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from switchboard.http import add_call_routes, api_access


def request_from(ip: str, headers: dict[str, str] | None = None, path: str = "/calls"):
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda k, d=None: (ip, 40000) if k == "peername" else d
    return make_mocked_request("GET", path, headers=headers or {}, transport=transport)


def test_without_a_token_only_loopback_may_use_the_api() -> None:
    assert api_access(request_from("127.0.0.1"), ())
    assert api_access(request_from("::1"), ("", ""))
    assert not api_access(request_from("203.0.113.5"), ())
    assert not api_access(request_from("10.0.0.7"), ("",))


def test_with_a_token_everyone_must_offer_it() -> None:
    tokens = ("s3cret-api-token", "console-token")
    assert not api_access(request_from("127.0.0.1"), tokens)  # not even loopback without it
    assert api_access(request_from("203.0.113.5", {"Authorization": "Bearer s3cret-api-token"}),
                      tokens)
    assert api_access(request_from("203.0.113.5", {"X-Switchboard-Token": "console-token"}),
                      tokens)
    assert api_access(request_from("203.0.113.5", path="/calls?token=s3cret-api-token"), tokens)
    assert not api_access(request_from("203.0.113.5", {"Authorization": "Bearer wrong"}), tokens)
    assert not api_access(request_from("203.0.113.5", {"Authorization": "Basic czNjcmV0"}),
                          tokens)


class RecordingApi:
    def __init__(self) -> None:
        self.placed: list[str] = []

    async def place_call(self, to: str, agent: str | None) -> dict[str, Any]:
        self.placed.append(to)
        return {"call_id": "c1", "to": to, "state": "calling"}

    def call_status(self, call_id: str) -> dict[str, Any]:
        return {"call_id": call_id, "state": "up"}

    async def transfer_call(self, call_id: str, target: str) -> dict[str, Any]:
        return {"call_id": call_id, "target": target}


async def test_post_calls_needs_the_token_and_places_nothing_without_it() -> None:
    api = RecordingApi()
    app = web.Application()
    add_call_routes(app, api, tokens=("s3cret-api-token",))
    async with TestClient(TestServer(app)) as client:
        refused = await client.post("/calls", json={"to": "sip:+15551234@trunk"})
        assert refused.status == 403
        assert "api_token" in (await refused.json())["error"]
        status = await client.get("/calls/c1")
        assert status.status == 403
        assert api.placed == []
        ok = await client.post("/calls", json={"to": "sip:+15551234@trunk"},
                               headers={"Authorization": "Bearer s3cret-api-token"})
        assert ok.status == 202
        assert api.placed == ["sip:+15551234@trunk"]
