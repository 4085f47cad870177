"""Every Prometheus metric Switchboard exports, defined in one place.

Labels are bounded: `transport` is one of the door names, `stage` one of STAGES
(ERROR_STAGES for stage_errors_total), `phrase` a cached phrase key (fillers as "filler"),
`kind` a short error class name chosen by the code that counts it (never a message).
`agent` (agent_calls_*) is the name of a configured agent.
Tests make their own `Metrics(CollectorRegistry())` so they never share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

TRANSPORTS = ("sip", "twilio", "freeswitch", "audiosocket", "browser", "asterisk_ws")
STAGES = ("asr", "llm_first_token", "llm_total", "tts_first_audio", "tts_total")
ERROR_STAGES = ("asr", "llm", "tts", "conversation")

# Conversational latencies: most answers land between 0.2 and 3 s.
_LATENCY_BUCKETS = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0,
)
# Barge-in and pacing: milliseconds matter.
_FAST_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
_CALL_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # CPU and memory of this process (process_cpu_seconds_total, ...) for the Capacity board.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        p = "switchboard_"
        # Calls
        self.calls_active = Gauge(
            p + "calls_active", "Calls in progress", ["transport"], registry=r
        )
        self.calls_total = Counter(
            p + "calls_total", "Calls ended, by outcome", ["transport", "outcome"], registry=r
        )
        self.calls_rejected_total = Counter(
            p + "calls_rejected_total", "Calls refused before answer", ["transport", "reason"],
            registry=r,
        )
        self.call_duration_seconds = Histogram(
            p + "call_duration_seconds", "Answered call duration", ["transport"],
            buckets=_CALL_BUCKETS, registry=r,
        )
        # The same calls by agent, counted where the agent for a call is known: by the
        # call records (switchboard.records.agentstats), so with records.enabled only.
        # `agent` is a configured agent name (bounded by the config, never caller input).
        self.agent_calls_active = Gauge(
            p + "agent_calls_active", "Answered calls in progress, by agent",
            ["transport", "agent"], registry=r,
        )
        self.agent_calls_total = Counter(
            p + "agent_calls_total", "Calls ended, by agent and outcome",
            ["transport", "agent", "outcome"], registry=r,
        )
        self.agent_call_duration_seconds = Histogram(
            p + "agent_call_duration_seconds", "Answered call duration, by agent",
            ["transport", "agent"], buckets=_CALL_BUCKETS, registry=r,
        )
        # Conversation
        self.stage_duration_seconds = Histogram(
            p + "stage_duration_seconds", "Time spent in each pipeline stage", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.response_latency_seconds = Histogram(
            p + "response_latency_seconds",
            "End of caller speech to the first bot audio frame sent", ["transport"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.bargein_latency_seconds = Histogram(
            p + "bargein_latency_seconds",
            "Confirmed caller speech onset to the last bot audio frame sent", ["transport"],
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.bargeins_total = Counter(p + "bargeins_total", "Barge-ins", ["transport"], registry=r)
        self.stage_errors_total = Counter(
            p + "stage_errors_total", "Errors and timeouts by stage", ["stage", "kind"], registry=r
        )
        self.vad_segments_total = Counter(
            p + "vad_segments_total", "Caller speech segments detected", ["transport"], registry=r
        )
        self.turns_total = Counter(p + "turns_total", "Completed conversation turns", registry=r)
        self.asr_speculative_total = Counter(
            p + "asr_speculative_total",
            "ASR started at the first silence: used at end of turn, or discarded on resume",
            ["outcome"], registry=r,
        )
        self.phrases_played_total = Counter(
            p + "phrases_played_total",
            "Cached phrases played (greeting, filler, apology, please_hold, reprompt, ...)",
            ["phrase"], registry=r,
        )
        self.queue_depth = Gauge(
            p + "queue_depth", "Jobs waiting for a model worker", ["engine"], registry=r
        )
        self.queue_rejected_total = Counter(
            p + "queue_rejected_total", "Jobs refused because a model queue was full", ["engine"],
            registry=r,
        )
        # Media
        self.rtp_packets_received_total = Counter(
            p + "rtp_packets_received_total", "RTP packets received", registry=r
        )
        self.rtp_packets_sent_total = Counter(
            p + "rtp_packets_sent_total", "RTP packets sent", registry=r
        )
        self.rtp_packets_invalid_total = Counter(
            p + "rtp_packets_invalid_total", "Datagrams dropped as invalid RTP/RTCP", ["reason"],
            registry=r,
        )
        self.rtp_packets_lost_total = Counter(
            p + "rtp_packets_lost_total", "RTP packets never received", registry=r
        )
        self.jitter_late_total = Counter(
            p + "jitter_late_packets_total", "Packets that arrived too late to play", registry=r
        )
        self.jitter_concealed_frames_total = Counter(
            p + "jitter_concealed_frames_total", "Frames concealed for loss", registry=r
        )
        self.jitter_delay_seconds = Histogram(
            p + "jitter_buffer_delay_seconds", "Jitter buffer delay sampled per call second",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.interarrival_jitter_seconds = Histogram(
            p + "rtp_interarrival_jitter_seconds", "RFC 3550 interarrival jitter per report",
            buckets=_FAST_BUCKETS, registry=r,
        )
        self.dtmf_digits_total = Counter(
            p + "dtmf_digits_total", "DTMF digits received", ["transport", "method"], registry=r
        )
        self.pacer_lateness_seconds = Histogram(
            p + "pacer_lateness_seconds", "How late each 20 ms outbound tick ran",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), registry=r,
        )
        self.pacer_skipped_ticks_total = Counter(
            p + "pacer_skipped_ticks_total", "Ticks skipped after a stall", registry=r
        )
        # Media streams (Twilio, FreeSWITCH, AudioSocket)
        self.stream_frames_total = Counter(
            p + "stream_frames_total", "20 ms audio frames carried by the stream doors",
            ["transport", "direction"], registry=r,
        )
        self.stream_messages_invalid_total = Counter(
            p + "stream_messages_invalid_total",
            "Stream messages refused as malformed, unknown or out of place",
            ["transport", "reason"], registry=r,
        )
        # SIP
        self.sip_requests_total = Counter(
            p + "sip_requests_total", "SIP requests received", ["method"], registry=r
        )
        self.sip_responses_sent_total = Counter(
            p + "sip_responses_sent_total", "SIP responses sent by status class", ["status_class"],
            registry=r,
        )
        self.sip_parse_errors_total = Counter(
            p + "sip_parse_errors_total", "Malformed SIP messages", ["transport"], registry=r
        )
        # SIP hostile input (sip.flood, sip.policy): method is INVITE | REGISTER | OPTIONS |
        # response | malformed | other; reason is rate (the request that tripped a block) |
        # blocked | connections (a TCP connection over the per-source cap).
        self.sip_flood_dropped_total = Counter(
            p + "sip_flood_dropped_total", "SIP messages dropped by the per-source flood limits",
            ["method", "reason"], registry=r,
        )
        self.sip_flood_blocks_total = Counter(
            p + "sip_flood_blocks_total", "Sources blocked for flooding, by method",
            ["method"], registry=r,
        )
        self.sip_sources_blocked = Gauge(
            p + "sip_sources_blocked", "Source addresses blocked for flooding now", registry=r
        )
        # kind: dial (outbound INVITE) | transfer (our REFER) | refer (a REFER sent to us)
        self.sip_targets_refused_total = Counter(
            p + "sip_targets_refused_total", "Calls or transfers refused: target not allowed",
            ["kind"], registry=r,
        )
        # SIP client side: trunk registration, outbound calls, transfers
        self.sip_registered = Gauge(
            p + "sip_registered", "1 while the trunk registration is valid", registry=r
        )
        self.sip_registrations_total = Counter(
            p + "sip_registrations_total", "REGISTER cycles to the trunk, by outcome",
            ["outcome"], registry=r,
        )
        self.sip_outbound_calls_total = Counter(
            p + "sip_outbound_calls_total", "Outbound INVITEs, by outcome", ["outcome"],
            registry=r,
        )
        self.sip_outbound_setup_seconds = Histogram(
            p + "sip_outbound_setup_seconds", "Outbound INVITE sent to 200 OK received",
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60), registry=r,
        )
        self.sip_transfers_total = Counter(
            p + "sip_transfers_total", "Blind transfers (REFER), by outcome", ["outcome"],
            registry=r,
        )
        # Call records (switchboard.records): kind is locked | disk_full | unavailable |
        # overflow | other. A failed write is kept and retried; overflow is what was dropped.
        self.records_write_errors_total = Counter(
            p + "records_write_errors_total", "Call-record writes that failed (retried later)",
            ["kind"], registry=r,
        )
        self.records_pending = Gauge(
            p + "records_pending", "Call-record writes waiting for the database", registry=r
        )
        # Dialplan (dialplan/, switchboard.dialplans): outcome is ok | invalid | error.
        self.dialplan_reloads_total = Counter(
            p + "dialplan_reloads_total", "Dialplan reloads (SIGHUP or file change), by outcome",
            ["outcome"], registry=r,
        )
        self.call_actions_total = Counter(
            p + "call_actions_total", "Actions an agent took (transfer, hangup, send_dtmf)",
            ["action", "outcome"], registry=r,
        )
        # Process
        self.event_loop_lag_seconds = Histogram(
            p + "event_loop_lag_seconds", "How late a periodic event-loop probe ran",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=r,
        )
        self.ready = Gauge(p + "ready", "1 when models are loaded and calls are taken", registry=r)
        # What the soak test (loadtest.soak) watches for leaks; read at scrape time
        # (switchboard.app sets their functions).
        self.asyncio_tasks = Gauge(
            p + "asyncio_tasks", "Tasks alive on the event loop", registry=r
        )
        self.python_threads = Gauge(
            p + "python_threads", "Python threads alive (native pool threads not counted)",
            registry=r,
        )
        self.rtp_ports_in_use = Gauge(
            p + "rtp_ports_in_use", "RTP ports allocated to SIP calls", registry=r
        )
