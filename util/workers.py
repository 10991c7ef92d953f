"""Worker pools that die with their parent, and commands that stop cleanly on SIGTERM / SIGINT.

Every process pool of the project is made by :func:`worker_pool`. Its workers ignore SIGINT (a
Ctrl-C reaches the whole process group; the parent decides) and exit when their parent is gone:
on Linux the kernel sends them SIGKILL when the parent dies (``PR_SET_PDEATHSIG``), elsewhere a
thread in each worker checks the parent's pid every second. So a ``kill -9`` of a command leaves
no worker behind.

:func:`stop_on_signals` turns SIGTERM and SIGINT into :class:`Stopped`, which unwinds the
command (staging folders are removed by their ``finally`` blocks, pools are shut down and their
workers killed); :func:`util.cli.run_main` prints one line and exits with 128 + the signal
number, as training does.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A command stopped by a signal (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` swallows it). ``note``: what the stop left behind, where the stop knows
    (None: the command's own note, :func:`util.cli.run_main`)."""

    note: str | None = None

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def _worker_init(parent: int) -> None:
    """Pool initializer: ignore SIGINT, die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of a DataLoader: the worker ignores SIGTERM and SIGINT, which Slurm and
    a terminal send to every process of the job (the training process finishes its step,
    checkpoints and stops its loader), and dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(os.getppid())


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process; leaving the block by an exception
    (a :class:`Stopped` signal included) cancels what is queued and kills the workers."""
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.kill()
        raise
    else:
        pool.shutdown(wait=True)


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
