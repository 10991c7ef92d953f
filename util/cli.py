"""Command-line entry points: expected errors as one line, exit status 2.

Bad input, a bad config, a missing file, an unreadable checkpoint or an unwritable output is an
*expected* error: the program prints ``<prog>: error: <message>`` (the message names the file or
key, what was expected and what was found) and exits with status 2, without a traceback. Anything
else is a bug and keeps its traceback. ``--debug`` on the command line or ``SSL_DEBUG=1`` shows
the traceback of expected errors too.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from util.errors import UserError

# the errors raised where a user's input is judged (util.errors); anything else is a bug
EXPECTED = (UserError,)
EXIT_EXPECTED = 2


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` among the arguments (removed from them) or ``SSL_DEBUG=1``."""
    argv = sys.argv if argv is None else argv
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get("SSL_DEBUG", "") not in ("", "0")


def message_of(err: BaseException) -> str:
    """The user-facing text of an expected error (KeyError's repr quotes are dropped)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


STOPPED_NOTE = ("the files being written were discarded, those already in place (a previous "
                "pseudolabel set, the dataset files) are intact")


def run_main(prog: str, main: Callable[[], Any], stopped_note: str = STOPPED_NOTE) -> Any:
    """Run ``main``; an expected error is printed as one line and exits with status 2. SIGTERM
    and SIGINT stop it (:mod:`util.workers`): one line (the stop, then ``stopped_note`` unless
    the stop brings its own account), exit status 128 + the signal number."""
    from util.workers import Stopped, stop_on_signals

    debug = debug_requested()
    sys.argv[0] = prog  # argparse's usage and errors name the command as the user ran it
    configure_logging(sys.argv)
    try:
        with stop_on_signals():
            return main()
    except Stopped as stop:
        note = stopped_note if stop.note is None else stop.note
        print(f"{prog}: {stop}" + (f"; {note}" if note else ""), file=sys.stderr)
        sys.exit(128 + stop.signum)
    except EXPECTED as err:
        if debug:
            raise
        print(f"{prog}: error: {message_of(err)}", file=sys.stderr)
        sys.exit(EXIT_EXPECTED)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE = "%H:%M:%S"
VERBOSITY = {"--quiet": logging.WARNING, "--verbose": logging.DEBUG}


def configure_logging(argv: list[str] | None = None) -> None:
    """Log lines (time, level, module) of every module to stderr: the loader's decisions, the
    training progress, warnings. ``--quiet`` (warnings and errors only) or ``--verbose`` (debug
    lines too) among ``argv`` set the terminal's level and are removed from it; the run
    folder's log.txt keeps INFO lines either way. Nothing changes where logging is configured
    already (a test, a caller's own setup)."""
    level = logging.INFO
    for flag, flag_level in VERBOSITY.items():
        while argv is not None and flag in argv:
            argv.remove(flag)
            level = flag_level
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE))
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))


def fail(prog: str, message: str) -> None:
    """Stop at once with an expected error (status 2)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_EXPECTED)


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
             file=None):
    """A tqdm bar on a terminal; on a pipe or log file nothing (the log lines stay the record).
    ``SSL_PROGRESS=1`` forces the bar, ``SSL_PROGRESS=0`` hides it."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    forced = os.environ.get("SSL_PROGRESS", "")
    show = forced == "1" or (forced != "0" and hasattr(file, "isatty") and file.isatty())
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, disable=not show,
                dynamic_ncols=True, leave=False)
