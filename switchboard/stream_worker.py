"""`python -m switchboard.stream_worker FD INDEX COUNT METRICS_SOCKET`: one stream worker.

Started by the main process (switchboard.workers), never by hand. FD is its end of a
SOCK_SEQPACKET pair: the first message is the config (JSON); after it, each message is
the bytes the main process read from a connection, with the connection's descriptor.
The worker serves those on its own Switchboard (agents, records, stream doors and
pacer; no SIP), and its /metrics on the Unix socket METRICS_SOCKET for the main process
to merge. It stops on SIGTERM (draining its streams, like the main process) or when the
main process goes away.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

from pydantic import ValidationError

from switchboard.config import Config
from switchboard.eventloop import run
from switchboard.logs import setup_logging

log = logging.getLogger("switchboard.worker")


class WorkerRole:
    """What a Switchboard needs to run as worker INDEX of COUNT."""

    def __init__(self, ctrl: socket.socket, index: int, count: int, metrics_path: str) -> None:
        self.ctrl = ctrl
        self.index = index
        self.count = count
        self.metrics_path = metrics_path


def _read_config(ctrl: socket.socket) -> Config:
    raw = ctrl.recv(1 << 20)  # blocking: nothing else to do until it comes
    return Config.model_validate_json(raw)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # A dialplan reload (SIGHUP, passed on by the main process) must not kill a worker
    # that has not yet installed its handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if len(args) != 4:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    ctrl = socket.socket(fileno=int(args[0]))
    try:
        config = _read_config(ctrl)
    except (OSError, ValidationError) as e:
        print(f"stream worker: no usable config from the main process: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    from switchboard.app import Switchboard  # after logging: loading it logs

    role = WorkerRole(ctrl, int(args[1]), int(args[2]), args[3])
    run(Switchboard(config, worker=role).run_until_stopped(), config.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
