"""The `lucafound` console script: one subcommand per module in `modeling_lucafound.commands`.

Each command module defines `register(subparsers)` (adds its parser and sets `func`) and keeps its heavy
imports inside the function that runs it, so `lucafound --help` stays fast.
"""

import argparse
import importlib
import importlib.util
import sys

# subcommand name -> module under modeling_lucafound.commands
COMMAND_MODULES = {
    "preprocess": "preprocess",
    "embed": "embed",
    "zero-shot": "zero_shot",
    "convert": "convert",
    "push": "push",
    "model-card": "model_card",
    "demo": "demo",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lucafound",
        description="LuCaFound: lung-cancer CT foundation model (preprocess, embed, zero-shot, convert, demo).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES.values():
        qualified = f"modeling_lucafound.commands.{module_name}"
        if importlib.util.find_spec(qualified) is None:  # tests/test_cli.py requires every module to exist
            continue
        importlib.import_module(qualified).register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import LuCaFoundInputError

    try:
        return int(args.func(args) or 0)
    except LuCaFoundInputError as error:
        print(f"lucafound {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
