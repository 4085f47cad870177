"""Pure audio and packet code: codecs, resampling, RTP/RTCP, jitter buffer, VAD, DTMF, pacing.

Nothing here opens a socket, reads a config file or imports another Switchboard package.
"""
