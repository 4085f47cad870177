"""A real PJSIP user agent (pjsua2) for interop tests, run as a subprocess.

Calls a SIP URI, plays a WAV as the caller's voice, records what comes back, optionally
sends RFC 4733 DTMF, hangs up, and prints one JSON line with what happened. Runs
pjsua2 single-threaded (we poll its events) with the null sound device.

  python tests/sip/pjsua_peer.py --uri sip:echo@127.0.0.1:5060 --play in.wav \
      --record out.wav --seconds 5 --dtmf 5
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import pjsua2 as pj


class Call(pj.Call):
    def __init__(self, acc: pj.Account, args: argparse.Namespace) -> None:
        super().__init__(acc)
        self.args = args
        self.state = "NULL"
        self.last_status = 0
        self.media_active = False
        self.confirmed_at: float | None = None
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.digits_received = ""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        self.state = info.stateText
        self.last_status = info.lastStatusCode
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()
        for i, mi in enumerate(info.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                aud = self.getAudioMedia(i)
                if self.args.record and self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.args.record)
                    aud.startTransmit(self.recorder)
                if self.args.play and self.player is None:
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(self.args.play, pj.PJMEDIA_FILE_NO_LOOP)
                    self.player.startTransmit(aud)
                self.media_active = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--play")
    ap.add_argument("--record")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--dtmf", default="")
    ap.add_argument("--codec", default="PCMU/8000/1")
    ap.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    args = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = 2
    cfg.logConfig.consoleLevel = 2
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    kind = pj.PJSIP_TRANSPORT_TCP if args.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
    ep.transportCreate(kind, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for c in ep.codecEnum2():  # offer only the codec under test
        ep.codecSetPriority(c.codecId, 255 if c.codecId.startswith(args.codec) else 0)

    acc_cfg = pj.AccountConfig()
    acc_cfg.idUri = "sip:pjsua@127.0.0.1"
    acc = pj.Account()
    acc.create(acc_cfg)

    call = Call(acc, args)
    prm = pj.CallOpParam(True)
    uri = args.uri + (";transport=tcp" if args.transport == "tcp" else "")
    result: dict[str, object] = {}
    try:
        call.makeCall(uri, prm)
        start = time.monotonic()
        dtmf_sent = False
        while time.monotonic() - start < args.seconds + 10:
            ep.libHandleEvents(10)
            if call.state in ("DISCONNCTD", "DISCONNECTED"):
                break
            if call.confirmed_at is not None:
                elapsed = time.monotonic() - call.confirmed_at
                if args.dtmf and not dtmf_sent and elapsed > args.seconds / 2:
                    call.dialDtmf(args.dtmf)
                    dtmf_sent = True
                if elapsed > args.seconds:
                    call.hangup(pj.CallOpParam(True))
                    for _ in range(100):
                        ep.libHandleEvents(10)
                        if call.state in ("DISCONNCTD", "DISCONNECTED"):
                            break
                    break
        result = {"state": call.state, "status": call.last_status,
                  "media_active": call.media_active,
                  "confirmed": call.confirmed_at is not None, "dtmf_sent": dtmf_sent,
                  "dtmf_received": call.digits_received}
    finally:
        # pjsua2 objects must go before the library does, or its destructors assert.
        call.recorder = None
        call.player = None
        del call
        gc.collect()
        ep.libDestroy()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
