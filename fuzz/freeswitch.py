"""FreeSWITCH mod_audio_stream metadata (streams.freeswitch): the first text frame of a
stream, parse_metadata() then metadata_rate() as the door does.

The documented error is MetadataError. Params must be flat strings.
"""

from __future__ import annotations

from streams.freeswitch import MetadataError, metadata_rate, parse_metadata

MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")  # aiohttp hands over text frames as str
    try:
        params = parse_metadata(text)
        rate = metadata_rate(params, 8000)
    except MetadataError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
    assert rate in (8000, 16000)
