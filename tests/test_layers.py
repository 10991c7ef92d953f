"""The package layers: util/ is the floor, no cycle between the top-level packages."""
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("util", "data_preprocessing", "dataloaders", "models", "inference")


def package_imports() -> dict[str, set[str]]:
    """For each top-level package, the other top-level packages its modules import (read with
    ast, so nothing is executed)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES and top != package:
                        edges[package].add(top)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in PACKAGES:
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_no_cycle_between_top_level_packages():
    edges = package_imports()
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_util_imports_nothing_of_the_project_but_util():
    assert package_imports().get("util", set()) == set()


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"util": {"models"}, "models": {"util"}}) == ["util", "models", "util"]
    assert find_cycle({"inference": {"models", "util"}, "models": {"util"}}) is None


def test_loaders_import_no_command_line_module():
    """dataloaders/ and inference/ need helpers, not the preprocessing CLIs (chaos, sabs, cmr,
    classmap, superpixels, verify, …)."""
    allowed = {"data_preprocessing.contract", "data_preprocessing.registry",
               "data_preprocessing.resample", "data_preprocessing.preprocess",
               "data_preprocessing.dicom"}
    for path in [*(ROOT / "dataloaders").rglob("*.py"), *(ROOT / "inference").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "data_preprocessing."):
                assert node.module in allowed, f"{path.name} imports {node.module}"
