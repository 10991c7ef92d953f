"""The notebooks in data_preprocessing/ run top to bottom on the phantom (so they cannot rot)."""
import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, cli, make_phantom_dataset
from data_preprocessing import supervoxels

NOTEBOOKS = ROOT / "data_preprocessing"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A phantom folder with superpixels and supervoxels, and a 2-step checkpoint trained on it."""
    root = tmp_path_factory.mktemp("notebooks")
    data = make_phantom_dataset(root / "data", seed=3, n_slices=5)
    supervoxels.generate(data, min_size=200, workers=1)
    out = cli("training.py", "with", "phantom", "setting1", f"data_dir={data}", "encoder=tiny",
              "num_workers=0", "device=cpu", "n_steps=2", f"log_dir={root / 'exps'}")
    assert out.returncode == 0, out.stderr[-2000:]
    return {"data": data, "checkpoint": next((root / "exps").rglob("latest.pth")),
            "out": root / "notebook_out"}


def execute(name: str, monkeypatch, **env: str) -> list[str]:
    """Run a stored notebook in data_preprocessing/ (as a user opening it there); the text of its
    outputs, one string per code cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{name} is stored with outputs"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    texts = []
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        texts.append("".join(o.get("text", "") for o in cell.outputs))
    figures = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    return texts + [f"{figures} figures"]


def test_walk_dataset(run, monkeypatch):
    texts = execute("walk_dataset.ipynb", monkeypatch, SSL_NOTEBOOK_DATA=str(run["data"]))
    out = "\n".join(texts)
    assert f"{run['data']}: dataset PHANTOM (MR), 10 scans" in out
    assert "pseudolabel sets: {'MIDDLE': 'felzenszwalb2d', 'SV200': 'felzenszwalb3d'}" in out
    assert "normalised (5, 64, 64), mean 0.000, std 1.000" in out
    assert "LIVER        scan 1:" in out
    assert texts[-1] == "3 figures"


def test_episodes_and_validation(run, monkeypatch):
    texts = execute("episodes_and_validation.ipynb", monkeypatch,
                    SSL_NOTEBOOK_CHECKPOINT=str(run["checkpoint"]),
                    SSL_NOTEBOOK_DATA=str(run["data"]), SSL_NOTEBOOK_OUT=str(run["out"]))
    out = "\n".join(texts)
    assert f"{run['checkpoint']}: tiny, trained 2 steps on PHANTOM fold 0, Setting 1" in out
    table = next(t for t in texts if t.startswith("organ"))
    assert [line.split()[0] for line in table.splitlines()[2:]] == [
        "RK", "LK", "LIVER", "SPLEEN", "overall"]
    assert re.search(r"\n[1-9][0-9]* overlays in ", "\n" + out), out
    assert list((run["out"] / "overlays").glob("*.png"))
    assert texts[-1] == "2 figures"
