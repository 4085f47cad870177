"""Call control through Twilio's REST API: hang up and blind transfer.

A Media Stream carries audio only; ending or moving the call is a REST request on the
call (POST /Accounts/{sid}/Calls/{CallSid}). The twilio package's client is synchronous
(requests), so every request runs in a worker thread with a timeout and the event loop
never waits on the network. The stream door never calls this inline from its message
handling: only the leg's hangup()/transfer(), which the conversation awaits.
"""

from __future__ import annotations

import asyncio
import logging
import re

import requests
from twilio.base.exceptions import TwilioException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

from pipeline.leg import TransferError

__all__ = ["TwilioCalls", "TwilioRestError", "dial_twiml", "rest_client"]

log = logging.getLogger(__name__)

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_PHONE = re.compile(r"\+?[0-9*#]{2,32}")
_SIP = re.compile(r"sips?:[^\s<>\"']{3,256}")


class TwilioRestError(Exception):
    """Twilio refused or did not answer a REST request."""


def dial_twiml(target: str) -> str:
    """TwiML that dials `target`: a phone number (E.164 or digits) or a sip:/sips: URI."""
    response = VoiceResponse()
    if _PHONE.fullmatch(target):
        response.dial(target)
    elif _SIP.fullmatch(target):
        dial = Dial()
        dial.sip(target)
        response.append(dial)
    else:
        raise ValueError(f"transfer target must be a phone number or a sip: URI, got {target!r}")
    return str(response)


class TwilioCalls:
    """REST control of calls on one account."""

    def __init__(self, account_sid: str, auth_token: str, *, http_client: HttpClient | None = None,
                 timeout: float = 10.0) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio REST needs both an account SID and an auth token")
        self.timeout = timeout
        self._client = Client(account_sid, auth_token,
                              http_client=http_client or TwilioHttpClient(timeout=timeout))

    async def hangup(self, call_sid: str) -> None:
        """End the call (status=completed)."""
        await self._update(call_sid, status="completed")

    async def transfer(self, call_sid: str, target: str) -> None:
        """Replace the call's TwiML with a <Dial> to `target`. Raises TransferError."""
        try:
            twiml = dial_twiml(target)
            await self._update(call_sid, twiml=twiml)
        except (ValueError, TwilioRestError) as exc:
            raise TransferError(str(exc)) from None

    async def _update(self, call_sid: str, **fields: str) -> None:
        if not _CALL_SID.fullmatch(call_sid):
            raise TwilioRestError(f"not a Twilio call SID: {call_sid[:40]!r}")
        try:
            async with asyncio.timeout(self.timeout + 1.0):
                await asyncio.to_thread(self._update_sync, call_sid, fields)
        except TimeoutError:
            raise TwilioRestError(f"Twilio did not answer within {self.timeout:.0f} s") from None
        except (TwilioException, requests.RequestException) as exc:
            raise TwilioRestError(f"Twilio refused the call update: {exc}") from None
        log.info("Twilio call %s updated: %s", call_sid, ", ".join(sorted(fields)))

    def _update_sync(self, call_sid: str, fields: dict[str, str]) -> None:
        self._client.calls(call_sid).update(**fields)


def rest_client(account_sid: str, auth_token: str) -> TwilioCalls | None:
    """A REST client when both credentials are configured, else None (hang-up then only
    closes the stream, and transfer is refused)."""
    if account_sid and auth_token:
        return TwilioCalls(account_sid, auth_token)
    return None
