"""The edge every ``python -m pipeline.<command>`` shares: an error is one line (what, where, what
to do) on stderr and exit 1, never a traceback unless asked for (``--debug`` or
``VIT_SCALING_DEBUG=1``); Ctrl-C ends with exit 130 and one line, no traceback.

Errors raised on Ray workers reach the driver wrapped, with the worker's traceback inside the
message; their last line is the worker's own error, which is what the line shows."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

DEBUG_FLAG = "--debug"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command has said what it means (e.g. how to resume)."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")


def one_line(err: BaseException) -> str:
    """The error in one line: its message's last line (the worker's own error when Ray wrapped
    it), named by its type unless that line names one already."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    head = text.split(":", 1)[0]
    named = head.endswith(("Error", "Exception")) and " " not in head
    return text if named else f"{type(err).__name__}: {text}" if text else type(err).__name__


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``, with its errors and Ctrl-C said in one line."""
    argv = sys.argv[1:] if argv is None else argv
    debug = DEBUG_FLAG in argv or os.environ.get("VIT_SCALING_DEBUG") == "1"
    try:
        return main([a for a in argv if a != DEBUG_FLAG])  # anywhere on the line, subcommands too
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        if not isinstance(interrupt, Interrupted):
            print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"error: {one_line(err)} (add {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return 1
