"""A stop request (SIGTERM) refuses new work at once, before stop() awaits anything."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics
from switchboard.app import Switchboard
from switchboard.config import Config
from tests.helpers import free_port


async def test_a_stop_request_refuses_new_calls_in_the_same_step() -> None:
    config = Config.model_validate({
        "agent": "echo", "records": {"enabled": False},
        "sip": {"listen": "127.0.0.1", "port": free_port(socket.SOCK_DGRAM)},
        "http": {"listen": "127.0.0.1", "port": free_port()},
    })
    app = Switchboard(config, metrics=Metrics(CollectorRegistry()))
    await app.start()
    try:
        assert app.sip is not None and app.sip.endpoint.accepting
        assert app.streams.ctx.accepting and app.readiness()["ready"]
        app.request_stop()
        # No await in between: readiness, SIP (INVITE and OPTIONS get 503) and the
        # stream doors must all say no now, not once stop() has reached its drain.
        assert not app.readiness()["ready"]
        assert not app.sip.endpoint.accepting and not app.streams.ctx.accepting
    finally:
        await app.stop()
