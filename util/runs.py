"""Run folders and the command line of training.py and validation.py (the sacred side).

``config_ssl_upload`` declares the keys; this module gives each run its folder and runs the
command:

- :func:`attach_run_folder` (called by the config hook once the config is checked and the run
  can start): the observer of the run's folder ``<log_dir>/<command>/<exp_name>/<id>``, or of
  the resumed run's own folder;
- :class:`RunFolderObserver`: sacred's file observer, plus ``log.txt`` (every log line of the
  run, with date and time), the code version in ``run.json`` (``info.code_version``) and a
  ``FAILED`` file naming the error of a failed run;
- :func:`run_cli`: ``python training.py with ...``: the keys checked with suggestions, expected
  errors as one line with exit status 2, a preempted run with exit status 128 + signal.
"""
from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from pathlib import Path

# sacred 0.8.7 imports pkg_resources, which warns on import: this module imports sacred first
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
from sacred.arg_parser import get_config_updates  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402
from sacred.utils import SacredInterrupt  # noqa: E402

from util.cli import EXPECTED, configure_logging, debug_requested, fail, message_of  # noqa: E402
from util.distributed import env_info  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.io import atomic_path, ensure_writable_dir  # noqa: E402
from util.version import code_version  # noqa: E402

LOG_FILE = "log.txt"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file_only(text: str) -> None:
    """Add ``text`` (what a command printed, e.g. a results table) to the run's log.txt."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).name == \
                LOG_FILE:
            handler.handle(logging.makeLogRecord({"name": "output", "levelno": logging.INFO,
                                                  "levelname": "INFO", "msg": "\n" + text}))


def attach_run_folder(ex, config: dict, command: str) -> None:
    """Give the run that is about to start its folder: ``<log_dir>/<command>/<exp_name>/<id>``,
    or the resumed run's own folder; none on ranks other than 0 (torchrun)."""
    if env_info().rank > 0:  # under torchrun only rank 0 writes the run folder
        ex.observers[:] = []
        return
    ensure_writable_dir(config["log_dir"], "log_dir")  # before any computation
    folder = resumed_run_folder(config["resume"]) if command == "train" else None
    if folder is not None:  # a resumed run goes on in its own folder
        ex.observers[:] = [ContinuingObserver(folder)]
    else:
        base = Path(config["log_dir"]) / command / config["exp_name"]
        ex.observers[:] = [RunFolderObserver(str(base))]


class RunFolderObserver(FileStorageObserver):
    """sacred's file observer; the run folder also gets ``log.txt`` (what the terminal showed of
    the log, with dates), the code version in ``run.json``, and for a failed run a ``FAILED``
    file with the error's last line (run.json has the trace)."""

    log_handler: logging.Handler | None = None

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info,
                      _id):
        meta_info = {**meta_info, "code_version": code_version()}
        run_id = super().started_event(ex_info, command, host_info, start_time, config,
                                       meta_info, _id)
        self._start_log()
        return run_id

    def _start_log(self) -> None:
        self.log_handler = logging.FileHandler(Path(self.dir) / LOG_FILE, encoding="utf-8")
        self.log_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        self.log_handler.setLevel(min(logging.getLogger().level, logging.INFO))
        logging.getLogger().addHandler(self.log_handler)

    def _stop_log(self) -> None:
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None
        cout = Path(self.dir) / "cout.txt"  # sacred's capture is off: always empty
        if cout.is_file() and cout.stat().st_size == 0:
            cout.unlink()

    def completed_event(self, stop_time, result):
        super().completed_event(stop_time, result)
        self._stop_log()
        (Path(self.dir) / "FAILED").unlink(missing_ok=True)  # a resume that finished the run

    def interrupted_event(self, interrupt_time, status):
        super().interrupted_event(interrupt_time, status)
        self._stop_log()

    def failed_event(self, fail_time, fail_trace):
        last = "".join(fail_trace).strip().splitlines()[-1:] if fail_trace else []
        if self.log_handler is not None:  # the terminal has its own line for it
            self.log_handler.handle(logging.makeLogRecord({
                "name": __name__, "levelno": logging.ERROR, "levelname": "ERROR",
                "msg": f"the run failed: {' '.join(last)}"}))
        super().failed_event(fail_time, fail_trace)
        self._stop_log()
        self._mark_failed(last)

    def _mark_failed(self, last: list[str]) -> None:
        (Path(self.dir) / "FAILED").write_text("\n".join(last) + "\n", encoding="utf-8")


class ContinuingObserver(RunFolderObserver):
    """sacred's file observer writing into an existing run folder (``resume=``): metrics.json,
    log.txt and the tensorboard events are appended to, the earlier run.json is kept as
    ``run.<n>.json`` and run.json describes the resumed segment. A resume that fails leaves the
    run as it was (its run.json, config.json, info.json and captured output; log.txt keeps the
    attempt's lines): the attempt's own record goes to ``run.<n>.resume_failed.json``, a new
    ``n`` for each failed attempt."""

    KEPT = ("config.json", "info.json", "cout.txt")  # what sacred rewrites when a run starts

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir.parent))
        self.run_dir = run_dir
        self.previous: Path | None = None
        self.kept: dict[str, bytes | None] = {}

    def _make_run_dir(self, _id) -> None:
        self.dir = str(self.run_dir)
        self.kept = {name: (self.run_dir / name).read_bytes()
                     if (self.run_dir / name).is_file() else None for name in self.KEPT}
        current = self.run_dir / "run.json"
        if current.is_file():
            self.previous = self.run_dir / f"run.{self._free('run.{}.json')}.json"
            current.rename(self.previous)

    def _free(self, pattern: str) -> int:
        n = 1
        while (self.run_dir / pattern.format(n)).exists():
            n += 1
        return n

    def _mark_failed(self, last: list[str]) -> None:
        """A failed resume leaves the run's own state (finished, interrupted) as it was."""

    def failed_event(self, fail_time, fail_trace):
        super().failed_event(fail_time, fail_trace)
        if self.previous is not None:
            failed = self.run_dir / f"run.{self._free('run.{}.resume_failed.json')}" \
                                    f".resume_failed.json"
            os.replace(self.run_dir / "run.json", failed)
            os.replace(self.previous, self.run_dir / "run.json")
        for name, data in self.kept.items():
            path = self.run_dir / name
            if data is None:
                path.unlink(missing_ok=True)
            else:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)


def resumed_run_folder(resume: str | None) -> Path | None:
    """The sacred run folder of a ``resume`` target (the folder, or ``<run>/snapshots/x.pth``),
    or None when it is not one (then the resumed run gets a new folder)."""
    if not resume:
        return None
    path = Path(resume)
    folder = path.parent.parent if path.suffix == ".pth" else path
    return folder if (folder / "config.json").is_file() and (folder / "run.json").is_file() \
        else None


# the keys given on this command line (``with key=value``), even where the value equals the
# default, which sacred does not count as a modification
GIVEN_KEYS: set[str] = set()


def given_keys(run) -> set[str]:
    """Keys this run was given: on the command line, by a named config or by ``ex.run``."""
    mods = run.config_modifications
    return set(GIVEN_KEYS) | set(mods.modified) | set(mods.added)


def check_cli_keys(ex, keys, args: list[str]) -> None:
    """Fail early, with a suggestion, on ``with key=value`` naming no config key."""
    if "with" not in args:
        return
    for token in args[args.index("with") + 1:]:
        if "=" not in token:
            if token not in ex.named_configs:
                close = difflib.get_close_matches(token, list(ex.named_configs), n=3)
                raise InputError(f"config: no named config {token!r}"
                                 + (f"; did you mean {' or '.join(map(repr, close))}?" if close
                                    else f"; known: {sorted(ex.named_configs)}"))
            continue
        key = token.split("=", 1)[0].split(".", 1)[0]
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=3)
            raise InputError(f"config: unknown key {key!r}"
                             + (f"; did you mean {' or '.join(map(repr, close))}?" if close
                                else "; see `python training.py print_config`"))


def run_cli(ex, keys, command: str, argv: list[str]) -> None:
    """``python <script>.py [--quiet|--verbose] [with ...]`` runs ``command``: an expected
    error (bad config, input or file) is one line and exit status 2 (``--debug`` or
    ``SSL_DEBUG=1``: the traceback). sacred's own commands and options (``print_config``,
    ``-F`` …) pass through to sacred. ``keys``: the names of every config key."""
    prog = Path(argv[0]).name
    debug = debug_requested(argv)
    configure_logging(argv)
    args = argv[1:]
    if not args or args[0] not in ex.commands:
        args = [command, *args]
    try:
        check_cli_keys(ex, keys, args)
    except InputError as err:
        fail(prog, str(err))
    words = args[1:args.index("with")] if "with" in args else args[1:]
    if args[0] != command or words:  # another command or sacred's own flags
        ex.run_commandline([argv[0], *args])
        return
    updates, named = get_config_updates(args[args.index("with") + 1:] if "with" in args else [])
    GIVEN_KEYS.clear()
    GIVEN_KEYS.update(updates)
    try:
        ex.run(command, config_updates=updates, named_configs=named)
    except SacredInterrupt as err:  # util.guards.Preempted: checkpoint written, INTERRUPTED
        print(f"{prog}: {err}", file=sys.stderr)
        sys.exit(128 + getattr(err, "signum", 0))
    except EXPECTED as err:
        if debug:
            raise
        fail(prog, message_of(err))
    finally:
        GIVEN_KEYS.clear()  # this command line's keys, not those of a later run in the process
