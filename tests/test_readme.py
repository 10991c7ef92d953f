"""The README's commands run as written. ``make quickstart`` and ``make test`` are what CI runs
(``.ci/run``); the example scripts are run by tests/test_examples.py; here every ``python``
command of the README runs in a fresh folder holding the files it names (six CHAOS-T2 scans with
labels as ``my_scans``, a support scan and its liver mask, two new scans), with one change for
time: training takes 4 steps instead of 2000."""
import os
import re
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from test_own_scans import chaos_scan

ROOT = Path(__file__).resolve().parents[1]
SHORTER = {"n_steps=2000": "n_steps=4 num_workers=0 device=cpu"}


def readme_commands() -> list[str]:
    """The ``python`` commands of the README's bash blocks, continuation lines joined."""
    commands, current, in_bash = [], "", False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(re.sub(r"\s+", " ", current).strip())
            current = ""
    return [c for c in commands if c.startswith("python ")]


def test_the_readme_commands_run_as_written(chaos_dir, tmp_path):
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["-m", "training.py", "predict.py",
                                                "validation.py"], commands
    src = tmp_path / "my_scans"
    (src / "labels").mkdir(parents=True)
    for pid in ("1", "2", "3", "5", "8", "10"):
        image, label = chaos_scan(chaos_dir, pid)
        sitk.WriteImage(image, str(src / f"scan_{pid}.nii.gz"))
        sitk.WriteImage(label, str(src / "labels" / f"scan_{pid}.nii.gz"))
    image, label = chaos_scan(chaos_dir, "13")
    sitk.WriteImage(image, str(tmp_path / "one_scan.nii.gz"))
    sitk.WriteImage(sitk.Cast(label == 1, sitk.sitkUInt8), str(tmp_path / "one_scan_liver.nii.gz"))
    for pid in ("15", "19"):
        sitk.WriteImage(chaos_scan(chaos_dir, pid)[0], str(tmp_path / f"new{pid}.nii.gz"))
    for script in ("training.py", "validation.py", "predict.py"):
        (tmp_path / script).symlink_to(ROOT / script)
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        for long, short in SHORTER.items():
            command = command.replace(long, short)
        out = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                             capture_output=True, text=True, encoding="utf-8", timeout=600)
        assert out.returncode == 0, (command, out.stderr[-3000:])
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == [
        "new15_pred.nii.gz", "new19_pred.nii.gz"]
    assert list((tmp_path / "exps" / "validate").rglob("summary.json"))
