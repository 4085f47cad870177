"""SDP session descriptions (RFC 4566) and offer/answer for one audio stream (RFC 3264).

SessionDescription.parse/__bytes__ handle the wire format and keep lines they do not
know. SdpSession is our side of the offer/answer exchange for one call: it answers
offers (first codec in the caller's order that we allow, plus telephone-event), makes
offers, reads answers, and bumps the o= version whenever our SDP changes (hold,
resume, codec change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace


class SdpError(ValueError):
    """A session description we cannot read or cannot work with."""

    status = 400


class NoCommonCodec(SdpError):
    """Nothing in the offer (or answer) that we can send and receive: answer 488."""

    status = 488


_DIRECTIONS = {
    "sendrecv": (True, True),
    "sendonly": (True, False),
    "recvonly": (False, True),
    "inactive": (False, False),
}
_BY_FLAGS = {flags: name for name, flags in _DIRECTIONS.items()}
# RFC 4566 5: order of the session-level and media-level lines we write.
# A phone call's SDP is well under 2 KB; these bound the work a hostile one can cause.
MAX_SDP_BYTES = 16 * 1024
MAX_MEDIA = 16  # m= sections
_SESSION_ORDER = "vosiuepcbtrzka"
_MEDIA_ORDER = "micbka"


def _direction(send: bool, recv: bool) -> str:
    return _BY_FLAGS[(send, recv)]


def _small_int(text: str, digits: int) -> int | None:
    """ASCII decimal of at most `digits` digits, else None: int() alone takes '٣' and ' 7',
    and raises ValueError (not SdpError) past 4300 digits."""
    return int(text) if len(text) <= digits and text.isascii() and text.isdigit() else None


def _int(text: str, what: str, maximum: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > maximum:
        raise SdpError(f"bad {what}: {text[:40]!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class Origin:
    username: str
    session_id: str
    version: int
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    @classmethod
    def parse(cls, text: str) -> Origin:
        parts = text.split()
        if len(parts) != 6:
            raise SdpError(f"o= needs 6 fields: {text[:60]!r}")
        version = _int(parts[2], "o= session version", 2**64 - 1)
        return cls(parts[0], parts[1], version, parts[5], parts[3], parts[4])

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    @classmethod
    def parse(cls, text: str) -> Connection:
        parts = text.split()
        if len(parts) != 3:
            raise SdpError(f"c= needs 3 fields: {text[:60]!r}")
        # Multicast TTL / address count ("224.2.1.1/127/3") are not ours to use.
        address = parts[2].split("/")[0]
        if not address:
            raise SdpError(f"c= without an address: {text[:60]!r}")
        return cls(address, parts[0], parts[1])

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls(address, "IN", "IP6" if ":" in address else "IP4")

    @property
    def is_null(self) -> bool:
        """c=IN IP4 0.0.0.0: the RFC 2543 way to put a call on hold."""
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class Codec:
    """One rtpmap entry: payload type and encoding (name/clock rate/channels)."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        suffix = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.name}/{self.clock_rate}{suffix}"

    def same_encoding(self, other: Codec) -> bool:
        return (self.name.lower(), self.clock_rate, self.channels) == (
            other.name.lower(),
            other.clock_rate,
            other.channels,
        )


# RFC 3551 static payload types, used when an offer lists one without an rtpmap.
STATIC_CODECS = {
    0: Codec(0, "PCMU", 8000),
    3: Codec(3, "GSM", 8000),
    4: Codec(4, "G723", 8000),
    8: Codec(8, "PCMA", 8000),
    9: Codec(9, "G722", 8000),
    13: Codec(13, "CN", 8000),
    18: Codec(18, "G729", 8000),
}
# What we can offer, by the names used in config; dynamic numbers are ours to choose.
KNOWN_CODECS = {
    "pcmu": STATIC_CODECS[0],
    "pcma": STATIC_CODECS[8],
    "g722": STATIC_CODECS[9],
    "opus": Codec(111, "opus", 48000, 2, "useinbandfec=1"),
}
TELEPHONE_EVENT = Codec(101, "telephone-event", 8000, fmtp="0-16")


@dataclass(frozen=True, slots=True)
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()
    other: tuple[tuple[str, str], ...] = ()  # i= b= k= and unknown lines, in order
    port_count: int = 1

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name[:value]; "" for a flag; None when absent."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attributes_named(self, name: str) -> list[str]:
        return [value or "" for key, value in self.attributes if key == name]

    @property
    def direction(self) -> str | None:
        """The media-level direction attribute, if any."""
        found = [key for key, _ in self.attributes if key in _DIRECTIONS]
        return found[-1] if found else None

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        return (
            int(value) if value and value.isascii() and value.isdigit() and len(value) < 5 else None
        )

    @property
    def maxptime(self) -> int | None:
        value = self.attribute("maxptime")
        return (
            int(value) if value and value.isascii() and value.isdigit() and len(value) < 5 else None
        )

    @property
    def rtcp_port(self) -> int | None:
        """RFC 3605 a=rtcp:<port> [address]."""
        port = _small_int((self.attribute("rtcp") or "").split(" ")[0], 5)
        return port if port is not None and port < 65536 else None

    def codecs(self) -> tuple[Codec, ...]:
        """The formats as codecs, in the order listed; unknown ones are left out."""
        rtpmaps: dict[str, tuple[str, int, int]] = {}
        for value in self.attributes_named("rtpmap"):
            pt, _, encoding = value.partition(" ")
            parts = encoding.strip().split("/")
            if len(parts) in (2, 3) and all(_small_int(p, 9) is not None for p in parts[1:]):
                channels = int(parts[2]) if len(parts) == 3 and parts[2] else 1
                rtpmaps[pt] = (parts[0], int(parts[1]), channels)
        fmtps = {}
        for value in self.attributes_named("fmtp"):
            pt, _, params = value.partition(" ")
            fmtps[pt] = params.strip()
        out = []
        for fmt in self.formats:
            number = _small_int(fmt, 3)
            if number is None or number > 127:
                continue
            if fmt in rtpmaps:
                name, rate, channels = rtpmaps[fmt]
                out.append(Codec(int(fmt), name, rate, channels, fmtps.get(fmt)))
            elif int(fmt) in STATIC_CODECS:
                out.append(replace(STATIC_CODECS[int(fmt)], fmtp=fmtps.get(fmt)))
        return tuple(out)

    def lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count != 1 else str(self.port)
        out = [f"m={' '.join((self.media, port, self.proto, *self.formats))}"]
        keyed = [(k, v) for k, v in self.other]
        if self.connection is not None:
            keyed.append(("c", str(self.connection)))
        keyed.sort(key=lambda kv: _MEDIA_ORDER.find(kv[0]) % len(_MEDIA_ORDER))
        out += [f"{k}={v}" for k, v in keyed]
        out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        return out


@dataclass(frozen=True, slots=True)
class SessionDescription:
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    timing: str = "0 0"
    attributes: tuple[tuple[str, str | None], ...] = ()
    media: tuple[MediaDescription, ...] = ()
    other: tuple[tuple[str, str], ...] = ()  # i= u= e= p= b= r= z= k= and unknown lines

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        if len(data) > MAX_SDP_BYTES:
            raise SdpError(f"SDP of {len(data)} bytes exceeds {MAX_SDP_BYTES}")
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        lines = [line.rstrip("\r") for line in text.split("\n")]
        lines = [line for line in lines if line.strip()]
        if not lines or lines[0].strip() != "v=0":
            raise SdpError("SDP must start with v=0")
        origin: Origin | None = None
        name, timing = "-", "0 0"
        session = _Section()
        media: list[_Section] = []
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=":
                raise SdpError(f"malformed SDP line: {line[:60]!r}")
            key, value = line[0], line[2:].strip()
            section = media[-1] if media else session
            if key == "m":
                if len(media) >= MAX_MEDIA:
                    raise SdpError(f"more than {MAX_MEDIA} media sections")
                media.append(_Section(m=value))
            elif key == "a":
                attr, colon, rest = value.partition(":")
                section.attributes.append((attr, rest if colon else None))
            elif key == "c":
                section.connection = Connection.parse(value)
            elif key == "o" and not media:
                origin = Origin.parse(value)
            elif key == "s" and not media:
                name = value
            elif key == "t" and not media:
                timing = value
            else:
                section.other.append((key, value))
        if origin is None:
            raise SdpError("SDP has no o= line")
        return cls(
            origin,
            name,
            session.connection,
            timing,
            tuple(session.attributes),
            tuple(m.media() for m in media),
            tuple(session.other),
        )

    def __str__(self) -> str:
        keyed = [
            ("o", str(self.origin)),
            ("s", self.session_name),
            ("t", self.timing),
            *self.other,
        ]
        if self.connection is not None:
            keyed.append(("c", str(self.connection)))
        keyed.sort(key=lambda kv: _SESSION_ORDER.find(kv[0]) % len(_SESSION_ORDER))
        lines = ["v=0", *(f"{k}={v}" for k, v in keyed)]
        lines += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        for m in self.media:
            lines += m.lines()
        return "\r\n".join(lines) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode()

    def direction_of(self, media: MediaDescription) -> str:
        """Media-level direction, else session-level, else sendrecv (RFC 4566 6)."""
        if media.direction is not None:
            return media.direction
        found = [key for key, _ in self.attributes if key in _DIRECTIONS]
        return found[-1] if found else "sendrecv"

    def connection_of(self, media: MediaDescription) -> Connection | None:
        return media.connection or self.connection


@dataclass
class _Section:
    """Lines gathered for the session or one m= section while parsing."""

    m: str = ""
    connection: Connection | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)

    def media(self) -> MediaDescription:
        parts = self.m.split()
        if len(parts) < 3:
            raise SdpError(f"m= needs media, port and proto: {self.m[:60]!r}")
        port, _, count = parts[1].partition("/")
        return MediaDescription(
            media=parts[0],
            port=_int(port, "m= port", 65535),
            proto=parts[2],
            formats=tuple(parts[3:]),
            connection=self.connection,
            attributes=tuple(self.attributes),
            other=tuple(self.other),
            port_count=_int(count, "m= port count", 65535) if count else 1,
        )


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """What the RTP session needs after an offer/answer exchange.

    `codec` and `telephone_event` carry the payload types to SEND with (the numbers the
    far end asked for); `recv_payload_type`/`recv_event_type` are the numbers to expect
    on incoming packets (ours; the same when we answered).
    """

    codec: Codec
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    direction: str  # ours: sendrecv, sendonly (they hold us), recvonly, inactive
    ptime: int
    recv_payload_type: int
    telephone_event: Codec | None = None
    recv_event_type: int | None = None

    @property
    def send(self) -> bool:
        return _DIRECTIONS[self.direction][0]

    @property
    def recv(self) -> bool:
        return _DIRECTIONS[self.direction][1]


@dataclass
class SdpSession:
    """Our side of offer/answer for one call (one audio stream).

    `codecs` are config names in our order of preference for offers ("PCMU", "PCMA",
    "opus", "G722"); in answers the caller's order wins. Set `direction` to
    "sendonly" to hold the far end, then create_offer(); back to "sendrecv" to resume.
    """

    address: str
    port: int
    session_id: int
    codecs: Sequence[str] = ("PCMU", "PCMA", "opus")
    ptime: int = 20
    dtmf: bool = True
    username: str = "switchboard"
    rtcp_port: int | None = None
    direction: str = "sendrecv"
    local: SessionDescription | None = field(default=None, init=False)
    remote: SessionDescription | None = field(default=None, init=False)
    negotiated: NegotiatedMedia | None = field(default=None, init=False)
    offer_pending: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        unknown = [name for name in self.codecs if name.lower() not in KNOWN_CODECS]
        if unknown or not self.codecs:
            raise SdpError(f"unknown codecs {unknown}; known: {sorted(KNOWN_CODECS)}")
        if self.direction not in _DIRECTIONS:
            raise SdpError(f"bad direction {self.direction!r}")

    # --- we offer ------------------------------------------------------------------

    def create_offer(self) -> SessionDescription:
        """An offer (initial or re-offer) with every codec we allow, in our order."""
        offered = [KNOWN_CODECS[name.lower()] for name in self.codecs]
        if self.dtmf:
            offered.append(TELEPHONE_EVENT)
        sdp = self._stamp(self._audio(offered, self.direction))
        self.offer_pending = True
        return sdp

    def receive_answer(self, answer: SessionDescription) -> NegotiatedMedia:
        """Apply the answer to our pending offer; NoCommonCodec if it rejected audio."""
        if not self.offer_pending or self.local is None:
            raise SdpError("an answer arrived with no offer pending")
        self.offer_pending = False
        ours = self.local.media[0]
        if len(answer.media) != len(self.local.media):
            raise SdpError("answer has a different number of m= lines than our offer")
        media = answer.media[0]
        if media.port == 0:
            raise NoCommonCodec("the answer rejected our audio stream")
        offered = ours.codecs()
        codec = next(
            (c for c in media.codecs()
             if c.name.lower() != "telephone-event" and _find(c, offered) is not None),
            None,
        )  # telephone-event rides along with an audio codec; it is never the codec
        if codec is None:
            raise NoCommonCodec(f"the answer chose no codec we offered: {media.formats}")
        mine = _find(codec, offered)
        event = _event_for(media.codecs(), codec)
        my_event = _event_for(offered, codec)
        self.remote = answer
        self.negotiated = self._negotiated(
            answer,
            media,
            codec,
            event,
            recv_pt=mine.payload_type if mine else codec.payload_type,
            recv_event=my_event.payload_type if (event and my_event) else None,
            direction=_mirror(answer.direction_of(media), self.direction, _held(answer, media)),
        )
        return self.negotiated

    # --- they offer ----------------------------------------------------------------

    def receive_offer(
        self, offer: SessionDescription
    ) -> tuple[SessionDescription, NegotiatedMedia]:
        """Answer an offer (initial or re-INVITE). Raises NoCommonCodec (488) when no
        audio stream can be accepted; our state is then unchanged."""
        chosen: tuple[int, Codec, Codec | None] | None = None
        allowed = [KNOWN_CODECS[name.lower()] for name in self.codecs]
        for index, media in enumerate(offer.media):
            if media.media != "audio" or media.port == 0 or not _is_rtp(media.proto):
                continue
            offered = media.codecs()
            codec = next((c for c in offered if _find(c, allowed) is not None), None)
            if codec is not None:
                chosen = (index, codec, _event_for(offered, codec) if self.dtmf else None)
                break
        if chosen is None:
            names = sorted({c.rtpmap for m in offer.media for c in m.codecs()})
            raise NoCommonCodec(f"no common codec: offered {names}, allowed {list(self.codecs)}")
        index, codec, event = chosen
        media = offer.media[index]
        if offer.connection_of(media) is None:
            raise SdpError("the offered audio stream has no c= address")
        direction = _mirror(offer.direction_of(media), self.direction, _held(offer, media))
        lines = []
        for i, m in enumerate(offer.media):
            if i == index:
                mine = replace(codec, fmtp=_find(codec, allowed).fmtp)  # type: ignore[union-attr]
                codecs = [mine] + ([replace(event, fmtp=TELEPHONE_EVENT.fmtp)] if event else [])
                lines.append(self._audio(codecs, direction).media[0])
            else:  # RFC 3264 6: reject by port 0, keeping the m= line in its place
                lines.append(MediaDescription(m.media, 0, m.proto, m.formats or ("0",)))
        answer = self._stamp(replace(self._audio([], direction), media=tuple(lines)))
        self.remote = offer
        self.offer_pending = False
        self.negotiated = self._negotiated(
            offer,
            media,
            codec,
            event,
            recv_pt=codec.payload_type,
            recv_event=event.payload_type if event else None,
            direction=direction,
        )
        return answer, self.negotiated

    # --- helpers -------------------------------------------------------------------

    def _audio(self, codecs: list[Codec], direction: str) -> SessionDescription:
        attributes: list[tuple[str, str | None]] = []
        for codec in codecs:
            attributes.append(("rtpmap", f"{codec.payload_type} {codec.rtpmap}"))
            if codec.fmtp:
                attributes.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))
        if self.rtcp_port is not None:
            attributes.append(("rtcp", str(self.rtcp_port)))
        attributes += [("ptime", str(self.ptime)), (direction, None)]
        media = MediaDescription(
            "audio",
            self.port,
            "RTP/AVP",
            tuple(str(c.payload_type) for c in codecs),
            attributes=tuple(attributes),
        )
        origin = Origin(self.username, str(self.session_id), 0, self.address)
        origin = replace(origin, addrtype=Connection.for_address(self.address).addrtype)
        return SessionDescription(origin, "-", Connection.for_address(self.address), media=(media,))

    def _stamp(self, sdp: SessionDescription) -> SessionDescription:
        """Give `sdp` our o= version: the last one if nothing changed, else one more
        (RFC 3264 8)."""
        if self.local is None:
            version = self.session_id
        else:
            version = self.local.origin.version
            same = replace(sdp, origin=replace(sdp.origin, version=version))
            if same != self.local:
                version += 1
        self.local = replace(sdp, origin=replace(sdp.origin, version=version))
        return self.local

    def _negotiated(
        self,
        remote: SessionDescription,
        media: MediaDescription,
        codec: Codec,
        event: Codec | None,
        *,
        recv_pt: int,
        recv_event: int | None,
        direction: str,
    ) -> NegotiatedMedia:
        connection = remote.connection_of(media)
        if connection is None:
            raise SdpError("the remote audio stream has no c= address")
        ptime = media.ptime or _session_ptime(remote) or 20
        rtcp = media.rtcp_port or media.port + 1
        return NegotiatedMedia(
            codec,
            connection.address,
            media.port,
            rtcp,
            direction,
            ptime,
            recv_pt,
            event,
            recv_event,
        )


def _find(codec: Codec, candidates: Sequence[Codec]) -> Codec | None:
    return next((c for c in candidates if c.same_encoding(codec)), None)


def _event_for(codecs: Sequence[Codec], audio: Codec) -> Codec | None:
    """telephone-event at the audio clock rate if offered (RFC 4733 2.1), else any."""
    events = [c for c in codecs if c.name.lower() == "telephone-event"]
    return next(
        (e for e in events if e.clock_rate == audio.clock_rate), events[0] if events else None
    )


def _held(sdp: SessionDescription, media: MediaDescription) -> bool:
    connection = sdp.connection_of(media)
    return connection is not None and connection.is_null


def _mirror(remote_direction: str, ours: str, remote_null: bool) -> str:
    """Our direction given theirs: we send only what they receive, and the reverse;
    c=0.0.0.0 means they want nothing sent to them (RFC 3264 8.4, RFC 2543 hold)."""
    their_send, their_recv = _DIRECTIONS[remote_direction]
    our_send, our_recv = _DIRECTIONS[ours]
    return _direction(our_send and their_recv and not remote_null, our_recv and their_send)


def _is_rtp(proto: str) -> bool:
    return proto.upper() in ("RTP/AVP", "RTP/AVPF")


def _session_ptime(sdp: SessionDescription) -> int | None:
    values = [v for k, v in sdp.attributes if k == "ptime" and v and v.isascii() and v.isdigit()]
    return int(values[0]) if values and len(values[0]) < 5 else None
