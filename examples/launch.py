"""Submit the example scripts' runs as one job array: on Slurm, or on this machine, via submitit.

    LAUNCHER=slurm SLURM_PARTITION=gpu bash examples/abdominal_mri_setting2.sh
    LAUNCHER=local FOLDS="0 1" bash examples/abdominal_mri_setting1.sh   # submitit, here

With ``LAUNCHER`` set, ``examples/lib.sh`` writes the commands of each fold (Setting 1) or each
fold and label group (Setting 2) — its training, then its validations — as one job of a jobs
file (commands one per line, jobs separated by a blank line) and calls this script, which
submits the jobs as one array (one task per job), waits for every task and, when all succeeded,
gathers the table as ``examples/results.sh`` does. A task runs its commands in order and stops at
the first that fails. ``WAIT=0`` submits and returns; run ``examples/results.sh`` when the tasks
are done. Slurm resources from the environment: ``SLURM_PARTITION``, ``SLURM_TIME_MIN`` (720),
``SLURM_GPUS`` (1), ``SLURM_CPUS`` (8), ``SLURM_PARALLEL`` (tasks at once; default all).

Preempted training stops with a checkpoint (docs/training.md); a task that was cut off is run
again by resubmitting the script with ``STAGE``/``FOLDS`` for what is missing, or by running its
training with ``resume=<run folder>``. This is a launcher, not a scheduler.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from util.cli import run_main  # noqa: E402
from util.errors import InputError, MissingInput  # noqa: E402

LAUNCHERS = ("slurm", "local")


def read_jobs(path: Path) -> list[list[str]]:
    """The jobs of a jobs file: blocks of shell command lines separated by blank lines."""
    if not path.is_file():
        raise MissingInput(f"{path}: expected a jobs file written by examples/lib.sh, found "
                           f"nothing there")
    jobs, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            jobs.append(current)
            current = []
    if not jobs:
        raise InputError(f"{path}: expected at least one job, found none (no fold or stage "
                         f"selected?)")
    return jobs


def run_job(commands: list[str], cwd: str) -> int:
    """One task: its commands in order (bash, from the project root); the first that fails
    fails the task, with its exit status."""
    for command in commands:
        print(f"+ {command}", flush=True)
        subprocess.run(["bash", "-c", command], cwd=cwd, check=True)
    return len(commands)


def executor(launcher: str, folder: Path):
    """submitit's Slurm executor with the resources from the environment, or its local one."""
    import submitit

    if launcher == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=int(os.environ.get("SLURM_TIME_MIN", "720")))
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = {"timeout_min": int(os.environ.get("SLURM_TIME_MIN", "720")),
              "gpus_per_node": int(os.environ.get("SLURM_GPUS", "1")),
              "cpus_per_task": int(os.environ.get("SLURM_CPUS", "8")),
              "name": "ssl-alpnet"}
    if os.environ.get("SLURM_PARTITION"):
        params["slurm_partition"] = os.environ["SLURM_PARTITION"]
    if os.environ.get("SLURM_PARALLEL"):
        params["slurm_array_parallelism"] = int(os.environ["SLURM_PARALLEL"])
    ex.update_parameters(**params)
    return ex


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--launcher", required=True, choices=LAUNCHERS)
    p.add_argument("--jobs", required=True, type=Path, help="jobs file written by lib.sh")
    p.add_argument("--log-dir", required=True, type=Path, help="the scripts' LOG_DIR")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    args = p.parse_args(argv)
    from submitit.core.utils import FailedJobError, UncompletedJobError

    jobs = read_jobs(args.jobs)
    folder = args.log_dir / "launcher" / "%j"
    tasks = executor(args.launcher, folder).map_array(run_job, jobs, [str(ROOT)] * len(jobs))
    print(f"submitted {len(tasks)} {args.launcher} task(s): "
          f"{', '.join(t.job_id for t in tasks)}; logs in {args.log_dir / 'launcher'}")
    if args.no_wait:
        return
    failed = []
    try:
        for task, commands in zip(tasks, jobs):
            try:
                task.result()
                print(f"task {task.job_id}: done ({len(commands)} command(s))")
            except (FailedJobError, UncompletedJobError) as err:
                failed.append(task)
                last = str(err).strip().splitlines()[-1:] or [type(err).__name__]
                print(f"task {task.job_id}: FAILED ({last[0]}); its log: "
                      f"{task.paths.stderr}", file=sys.stderr)
    except BaseException:
        for task in tasks:  # a stopped launcher leaves no task behind
            task.cancel(check=False)
        raise
    if failed:
        print(f"examples/launch.py: {len(failed)} of {len(tasks)} task(s) failed; their logs "
              f"are named above; the table was not gathered", file=sys.stderr)
        sys.exit(1)
    subprocess.run(["bash", str(ROOT / "examples" / "results.sh")], cwd=ROOT, check=True)


if __name__ == "__main__":
    run_main("examples/launch.py", main, stopped_note="its tasks were cancelled (WAIT=0 leaves "
                                                      "submitted tasks running)")
