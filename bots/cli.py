"""The ``ovbot`` command line. Each command group lives in its own module and registers
its subcommands here; handlers take the parsed arguments and return an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ovbot.core.logging_setup import configure_logging
from ovbot.core.errors import OvbotError


def build_parser() -> argparse.ArgumentParser:
    from ovbot.bots import build_commands, chat_commands, discord_commands, models_commands, serve

    parser = argparse.ArgumentParser(
        prog="ovbot", description="Local-first private AI chat bot on OpenVINO GenAI."
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="download, verify, list, build or convert models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_commands.register(model_commands)
    build_commands.register(model_commands)

    serve.register(commands)
    chat_commands.register(commands)
    discord_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level or "INFO")
    try:
        return int(args.func(args) or 0)
    except OvbotError as exc:
        print(f"ovbot: {exc.user_message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("ovbot").info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
