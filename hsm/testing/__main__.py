"""``python -m hsm.testing up DIR [--members N]`` / ``down DIR``: SoftHSM harnesses from a shell.

``up`` prints the path of the harness's ``hsm.toml`` on stdout (and nothing else there).
Exit status: 0 done, 1 the harness could not be built or removed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hsm.testing.softhsm import HarnessError, harness_down, harness_up


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1 member")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hsm.testing",
        description="Stand up or remove a harness of independent SoftHSM instances.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="build a harness in DIR (re-used if already there)")
    up.add_argument("directory", metavar="DIR")
    up.add_argument("--members", type=_positive, metavar="N",
                    help="number of SoftHSM instances (default: 1, or one per --name)")
    up.add_argument("--name", dest="names", action="append", metavar="NAME",
                    help="member name, once per member (default hsm-a, hsm-b, ...)")
    down = commands.add_parser("down", help="remove the harness in DIR")
    down.add_argument("directory", metavar="DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            members = args.members or (len(args.names) if args.names else 1)
            harness = harness_up(args.directory, members, names=args.names)
            print(harness.config_path)
        else:
            harness_down(args.directory)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
