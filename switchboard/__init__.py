"""The Switchboard application: config, CLI, HTTP server, SIP listener, shutdown."""

__version__ = "0.1.0"
