"""The `switchboard` command."""

from __future__ import annotations

import argparse
import os
import sys

from dialplan.loader import DialplanError, load_file
from dialplan.matcher import routing_table
from loadtest.command import add_loadtest_command
from switchboard import __version__
from switchboard.config import Config, ConfigError, load_config
from switchboard.dial import add_call_command
from switchboard.eventloop import run
from switchboard.logs import setup_logging
from switchboard.records.cli import add_calls_command


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("SWITCHBOARD_CONFIG")
    config = load_config(path)
    if getattr(args, "agent", None):
        config = config.model_copy(update={"agent": args.agent})
    return config


def _cmd_serve(args: argparse.Namespace) -> int:
    from switchboard.app import Switchboard

    config = _load(args)
    setup_logging(config.log.level, config.log.format)
    run(Switchboard(config).run_until_stopped(), config.event_loop)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(config.model_dump_json(indent=2, exclude={"sip": {"trunk": {"password"}},
                                                    "llm": {"api_key"},
                                                    "records": {"dsn"}}))
    # The routing table goes to stderr with the verdict: stdout stays the config's JSON.
    if config.dialplan:  # checked as `serve` reads it, WAVs included
        print(routing_table(load_file(config.dialplan)), file=sys.stderr)
    else:
        print(f"no dialplan: every call goes to the {config.agent!r} agent", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer calls")
    serve.add_argument("--config", "-c", help="YAML config file (or $SWITCHBOARD_CONFIG)")
    serve.add_argument("--agent", choices=["echo", "conversation"],
                       help="answer every call with this agent")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check-config", help="validate the config and the dialplan, print "
                                                "the config and the routing table")
    check.add_argument("--config", "-c", help="YAML config file (or $SWITCHBOARD_CONFIG)")
    check.set_defaults(func=_cmd_check_config)

    add_call_command(sub)  # `switchboard call <sip-uri> --play in.wav ...` (switchboard.dial)
    add_calls_command(sub)  # `switchboard calls [id]`: call records (switchboard.records)
    add_loadtest_command(sub)  # `switchboard loadtest sip|twilio ...` (loadtest.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DialplanError) as e:
        print(f"switchboard: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
