"""Shared test fixtures: the location of ../shared/data and small helpers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("SSL_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


def _require(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        message = (f"shared data folder {path} not found; set SSL_SHARED_DATA to the folder "
                   f"holding CHAOST2/, CMR/ and CT_example/")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def chaos_dir() -> Path:
    return _require("CHAOST2")


@pytest.fixture(scope="session")
def cmr_dir() -> Path:
    return _require("CMR")


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    return _require("CT_example")


@pytest.fixture(scope="session")
def chaos_prepared(chaos_dir, tmp_path_factory) -> Path:
    """The 20 shared CHAOS-T2 scans linked, registered, indexed, with MIDDLE superpixels."""
    from data_preprocessing import classmap, superpixels
    from data_preprocessing.contract import register
    from data_preprocessing.prepare import link_scans

    root = tmp_path_factory.mktemp("chaos_prepared")
    link_scans(chaos_dir, root)
    register(root, "CHAOST2")
    classmap.write_classmap(root, 1)
    superpixels.generate(root, "MIDDLE")
    return root


@pytest.fixture(autouse=True)
def _restore_locale():
    """Writing DICOM with SimpleITK (GDCM) resets the process locale to "C"; undo it per test."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def make_phantom_dataset(root: Path, seed: int = 0, size: int = 64, n_slices: int = 5) -> Path:
    """A small registered phantom folder with MIDDLE superpixels and classmap_1.json."""
    from data_preprocessing import classmap, superpixels
    from data_preprocessing.phantom import write_phantom

    write_phantom(root, seed=seed, size=size, n_slices=n_slices)
    superpixels.generate(root, workers=2)
    classmap.write_classmap(root, 1)
    return root


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python <args>`` in the project root, output captured."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          encoding="utf-8", timeout=300, env={**os.environ, **(env or {})})


def one_line_error(out: subprocess.CompletedProcess, prog: str, message: str) -> None:
    """Exit status 2, no traceback, one ``<prog>: error:`` line holding ``message``."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, out.stderr[-2000:]
    assert message in errors[0], errors[0]
