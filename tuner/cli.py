"""The `tuner` command line: parses arguments and hands each command to its module.

Exit codes: 0 ok, 1 the work failed, 2 bad usage or invalid config. Errors go
to stderr as one clear line each. Each command's module owns its flags
(`add_arguments(parser)`) and its work (`main(args) -> int`), so this file
only knows their names.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tuner import __version__
from tuner.errors import ConfigError, TunerError, UsageError

DEFAULT_CONFIG = "/etc/tuner/tuner.yaml"
DEFAULT_LISTEN = "127.0.0.1:9717"

# command -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("tuner.daemon", "run the daemon in the foreground"),
    "check": ("tuner.cli", "validate the config and print every error"),
    "once": ("tuner.probe", "run each (or the named) target once, tuning as it goes"),
    "probe": ("tuner.probe", "search for the knee and cliff of one URL"),
    "sweep": ("tuner.sweep", "fetch one URL at fixed pool sizes, one after another"),
    "lab": ("tuner.lab", "serve the built-in lab target on loopback"),
    "demo": ("tuner.demo", "start a lab target and the daemon against it, and show the tuning"),
    "reload": ("tuner.daemon", "ask a running daemon to reload its config"),
}


def default_config_path() -> str:
    """`$TUNER_CONFIG`, else /etc/tuner/tuner.yaml."""
    return os.environ.get("TUNER_CONFIG") or DEFAULT_CONFIG


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The `-c FILE` flag shared by `run`, `check` and `once`."""
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="config file (default: $TUNER_CONFIG, else /etc/tuner/tuner.yaml)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tuner check`."""
    add_config_argument(parser)


def main_check(args: argparse.Namespace) -> int:
    """`tuner check`: exit 0 when the config is valid, else print every error and exit 2."""
    from tuner.config import load_config

    path = args.config or default_config_path()
    config = load_config(path)
    names = ", ".join(t.name for t in config.targets) or "none"
    print(f"{path}: ok, {len(config.targets)} target(s): {names}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; only `command`'s module is imported for its flags.

    Importing every command's module would make `tuner lab` pay for
    `requests` and APScheduler, and `tuner --help` for all of them.
    """
    parser = argparse.ArgumentParser(
        prog="tuner",
        description="Fetch sets of URLs as fast as the far side and your own machine allow.",
    )
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
            adder(p)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command and return its exit code."""
    if args.command == "check":
        return main_check(args)
    module = importlib.import_module(COMMANDS[args.command][0])
    runner = getattr(module, f"main_{args.command}", None) or module.main
    code: int = runner(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tuner` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return run_command(args)
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    except UsageError as err:
        print(f"tuner {args.command}: {err}", file=sys.stderr)
        return 2
    except TunerError as err:
        print(f"tuner {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
