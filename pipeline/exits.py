"""The edge every ``python -m pipeline.<command>`` shares: an error is one line (what, where, what
to do) on stderr and exit 1, never a traceback unless asked for (``--debug`` or
``VIT_SCALING_DEBUG=1``); Ctrl-C ends with exit 130 and one line, no traceback; SIGTERM (``kill``,
``timeout``, Slurm, Kubernetes) is answered the same way, with exit 143.

Ctrl-C is recorded before it is raised (:func:`interrupted`): a library may catch the
KeyboardInterrupt (Ray's blocking calls turn it into a status, and one path loses it), so loops
that wait check the record too (:func:`check_interrupt`), and a command that returns after a
Ctrl-C still ends with 130. Ray Tune's own SIGINT handler is turned off (it would end a grid
quietly and carry on); Ray Train's is kept out by running ``fit`` off the main thread
(``pipeline.pretrain.launch.fit_on_ray``).

Errors raised on Ray workers reach the driver wrapped, with the worker's traceback inside the
message; their last line is the worker's own error, which is what the line shows."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import signal
import sys
import threading
from typing import Callable, NoReturn

DEBUG_FLAG = "--debug"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command has said what it means (e.g. how to resume)."""


_INTERRUPTED = threading.Event()
_DEFERRED = {"depth": 0, "pending": False}  # the main thread inside deferred_interrupts(); a Ctrl-C held
_CAUGHT = {"installed": False, "signal": signal.SIGINT}  # our handlers are in place; the last signal caught
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.set()
    _CAUGHT["signal"] = signum
    if _DEFERRED["depth"]:
        _DEFERRED["pending"] = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupts():
    """A Ctrl-C that comes inside the block is raised when it ends: for writes that must not be
    cut in half (an SQLite transaction interrupted midway kept the database locked for the
    process's next write, the one that marks the study KILLED)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
    if not _DEFERRED["depth"] and _DEFERRED["pending"]:
        _DEFERRED["pending"] = False
        raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C came since the command started (whatever became of its KeyboardInterrupt)."""
    return _INTERRUPTED.is_set()


def check_interrupt() -> None:
    """KeyboardInterrupt if Ctrl-C came, even where a library swallowed the first one."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def catch_ctrl_c() -> None:
    """Ctrl-C and SIGTERM recorded before they are raised as KeyboardInterrupt (:func:`interrupted`);
    Ray Tune's handler kept out."""
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            signal.signal(number, _on_sigint)
        _CAUGHT["installed"] = True


def catch_again() -> None:
    """After ``ray.init``, which puts its own SIGTERM handler in place (it kills the local Ray and
    exits 1, the runs left RUNNING in MLflow): ours again, where a command had put them."""
    if _CAUGHT["installed"]:
        catch_ctrl_c()


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")


# Lines that only point elsewhere: SQLAlchemy's and pydantic's links to their docs
LINK_LINE = re.compile(r"^\(Background on this error at: \S+\)$|^For further information visit \S+$")


def one_line(err: BaseException) -> str:
    """The error in one line: its message's last line (the worker's own error when Ray wrapped
    it), named by its type unless that line names one already; never only a link: a pydantic
    error says which field and why, a database error what the database said."""
    if callable(getattr(err, "errors", None)) and hasattr(err, "title"):  # pydantic's ValidationError
        try:
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors())
            return f"invalid {err.title}: {fields}"
        except Exception:  # a look-alike (Ray's wrapper of a worker's error): its lines below
            pass
    if isinstance(getattr(err, "orig", None), Exception):  # SQLAlchemy's wrapper of the database's error
        return f"{type(err).__name__}: {str(err.orig).strip() or type(err.orig).__name__}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not LINK_LINE.match(line.strip())]
    text = lines[-1] if lines else ""
    head = text.split(":", 1)[0]
    named = head.endswith(("Error", "Exception")) and " " not in head
    return text if named else f"{type(err).__name__}: {text}" if text else type(err).__name__


def end(status: int) -> NoReturn:
    """Exit a command with ``status`` once its atexit handlers ran (Ray's shutdown of a local Ray,
    logging's flush), without the interpreter's teardown of every module: that took about 2 s after
    a study (torch, Ray, MLflow loaded; measured, issue 31). With another non-daemon thread still
    running, the usual exit, which waits for it."""
    others = [t for t in threading.enumerate() if t.is_alive() and not t.daemon and t is not threading.main_thread()]
    if others:
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``, with its errors and Ctrl-C said in one line."""
    argv = sys.argv[1:] if argv is None else argv
    debug = DEBUG_FLAG in argv or os.environ.get("VIT_SCALING_DEBUG") == "1"
    catch_ctrl_c()
    try:
        status = main([a for a in argv if a != DEBUG_FLAG])  # anywhere on the line, subcommands too
        check_interrupt()  # a Ctrl-C that something swallowed still ends the command with 130
        return status
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        if not isinstance(interrupt, Interrupted):
            print("interrupted", file=sys.stderr)
        return 128 + int(_CAUGHT["signal"])
    except Exception as err:
        if debug:
            raise
        print(f"error: {one_line(err)} (add {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return 1
