"""The one sacred experiment of training.py and validation.py: every key, its type, its default.

Defaults are the original's (method.md §7.1). Named configs select a dataset, a setting, a label
group, a pseudolabel source, and the phantom quickstart::

    python training.py with chaost2 setting2 group0 eval_fold=3
    python training.py with quickstart
    python validation.py with chaost2 group1 reload_model_path=exps/.../snapshots/latest.pth

Each key is declared once, in :data:`KEYS` (default, types, allowed values, meaning); the checks
and ``print_config`` come from there. sacred's read-only config stays on, an unknown key fails
(sacred: "Added new config entry"; on the command line with a suggestion), and a value of the
wrong type or outside its allowed values fails naming the key, what it expects and what it got.
"""
from __future__ import annotations

import difflib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
from sacred import Experiment, SETTINGS  # noqa: E402
from sacred.arg_parser import get_config_updates  # noqa: E402
from sacred.utils import SacredInterrupt  # noqa: E402  (sacred 0.8.7 imports pkg_resources)
from sacred.observers import FileStorageObserver  # noqa: E402

from data_preprocessing.contract import no_labels_error  # noqa: E402
from data_preprocessing.registry import REGISTRY, get_dataset_info  # noqa: E402
from dataloaders.episodes import SLICE_DRAWS, SUPERPIXEL_DRAWS, setting_exclusions  # noqa: E402
from dataloaders.evaluation import PROTOCOLS, REALISTIC_CHUNKS  # noqa: E402
from inference.loader import check_pretrained  # noqa: E402
from models.alpnet import PROTOTYPES  # noqa: E402
from models.encoder import ENCODER_NAMES  # noqa: E402
from util.cli import EXPECTED, debug_requested, fail, message_of  # noqa: E402
from util.device import resolve_device  # noqa: E402
from util.distributed import env_info  # noqa: E402
from util.io import ensure_writable_dir, read_json  # noqa: E402
from util.errors import InputError  # noqa: E402

SETTINGS.CAPTURE_MODE = "no"
SETTINGS.DISCOVER_SOURCES = "none"

ex = Experiment("SSL-ALPNet", save_git_info=False)



@dataclass(frozen=True)
class Key:
    """One config key: default, accepted types, allowed values (None: any), what it does.
    A default of ``DERIVED`` is computed from other keys (:func:`derive`) unless given."""
    default: Any
    types: tuple[type, ...]
    choices: tuple | None = None
    doc: str = ""
    low: float | None = None  # the smallest value allowed (numbers)
    positive: bool = False    # strictly above ``low`` (for floats)


DERIVED = None
_NONE = type(None)

# Every key of training.py and validation.py, declared once; defaults are the original's (§7.1).
KEYS: dict[str, Key] = {
    # run
    "seed": Key(1234, (int,), low=0),
    "device": Key("auto", (str,), doc="auto | cpu | cuda | cuda:N | mps"),
    "deterministic": Key(False, (bool,), doc="deterministic kernels (same seed -> same losses "
                                             "on a CPU)"),
    "num_workers": Key(4, (int,), low=0),
    # data
    "dataset": Key(DERIVED, (str,), doc="CHAOST2 | SABS | CMR | PHANTOM, or your own folder's "
                                        "name; default: the name in data_dir's dataset.json, "
                                        "else CHAOST2"),
    "data_dir": Key(DERIVED, (str,), doc="default ./data/<dataset>"),
    "eval_fold": Key(0, (int,), low=0),
    "label_sets": Key(DERIVED, (int, str), doc="label group whose classes are tested (default "
                                               "0); validation: 'all' scores every group in one "
                                               "run"),
    "setting": Key(DERIVED, (int,), (1, 2), doc="1: all slices; 2: slices with any test class "
                                                "never sampled; default 2 (the original's), 1 "
                                                "for a folder with unlabelled scans"),
    "exclude_labels": Key(DERIVED, (list,), doc="default: the test classes of label_sets in "
                                                "Setting 2 (from dataset.json), [] in Setting 1"),
    "exclude_mode": Key("any", (str,), ("any", "all"), doc="supervoxel episodes, Setting 2: a "
                        "slice is excluded when it holds any test class (paper) or all of them "
                        "(the original code)"),
    "pseudolabel": Key("superpixel", (str,), ("superpixel", "supervoxel", "manual")),
    "superpix_scale": Key("MIDDLE", (str,), doc="pseudolabel variant: MIDDLE, SMALL, LARGE, "
                                                "SV<min_size>"),
    "superpixel_draw": Key("uniform", (str,), SUPERPIXEL_DRAWS, doc="uniform over the "
                           "superpixels present, or the original's UniformInt[1, max-1]"),
    "slice_draw": Key("uniform", (str,), SLICE_DRAWS, doc="uniform over the "
                      "slices with a drawable pseudolabel, or the original's shuffled epoch of "
                      "1000 indices modulo the slice count"),
    "min_superpixel_px": Key(DERIVED, (int,), doc="smallest pseudolabel an episode draws; "
                             "default 100 (uniform draw), 1 (original draw)"),
    "min_fg_px": Key(100, (int,), doc="manual-label episodes: smallest organ area of a slice",
                     low=1),
    "which_aug": Key("sabs_aug", (str,), ("sabs_aug", "aug_v3")),
    # model
    "encoder": Key("deeplabv3_resnet101", (str,), ENCODER_NAMES),
    "prototypes": Key("alp", (str,), PROTOTYPES, doc="alp, or the ablation 'global': one "
                      "masked-average prototype for foreground and background (PANet)"),
    "pretrained_weights": Key(None, (str, _NONE), doc="coco, imagenet (torchvision's files via the "
                              "torch hub cache) or the path of a local copy"),
    "reload_model_path": Key(None, (str, _NONE), doc="weights to evaluate: a .pth (ours or the "
                             "original's), a training run folder, 'latest' or 'best'"),
    "usealign": Key(True, (bool,)),
    "use_wce": Key(True, (bool,)),
    "proto_grid_size": Key(8, (int,), low=1),
    "feature_hw": Key([32, 32], (list,)),
    "val_wsize": Key(2, (int,), low=1),
    "fg_thresh": Key(0.95, (float,), low=0.0),
    "empty_prototypes": Key("fallback", (str,), ("fallback", "skip"), doc="training: an empty "
                            "local prototype set uses the mask's global prototype (fallback), "
                            "or the step is skipped without an update (the original)"),
    "bg_thresh": Key(0.95, (float,), low=0.0),
    # optimisation
    "n_steps": Key(100000, (int,), low=1),
    "lr": Key(1e-3, (float,), low=0.0, positive=True),
    "momentum": Key(0.9, (float,), low=0.0),
    "weight_decay": Key(5e-4, (float,), low=0.0),
    "lr_step_gamma": Key(0.95, (float,), low=0.0, positive=True),
    "lr_step_size": Key(1000, (int,), low=1),
    # logging and checkpoints
    "print_interval": Key(100, (int,), low=1),
    "image_every": Key(1000, (int,), low=1),
    "save_snapshot_every": Key(25000, (int,), low=1),
    "checkpoint_every": Key(500, (int,), low=1),
    "val_every": Key(0, (int,), doc="validate every N steps and at the end (0: off): "
                                    "val/dice/*, val_curve.csv/.png, snapshots/best.pth", low=0),
    "resume": Key(None, (str, _NONE), doc="run folder or checkpoint file to continue from"),
    # declared DERIVED (None until "auto" is filled in) so that a named config's True / False is
    # not a type change that sacred warns about
    "bf16": Key(DERIVED, (bool, str), (True, False, "auto"), doc="bfloat16 autocast of the "
                "encoder; auto (default): where the hardware has it (CUDA with bf16, "
                "AVX512-BF16/AMX)"),
    "channels_last": Key(DERIVED, (bool, str), (True, False, "auto"), doc="memory layout only; "
                         "auto (default): CUDA and AVX-512 CPUs"),
    "compile": Key(False, (bool,)),
    "log_dir": Key("./exps", (str,)),
    "exp_prefix": Key("", (str,)),
    "exp_name": Key(DERIVED, (str,), doc="default from prefix, dataset, setting, group, "
                                         "pseudolabel, scale, fold"),
    # evaluation
    "protocol": Key("paper", (str,), PROTOCOLS, doc="paper (method.md §6) | realistic (every "
                    "slice, no query ground truth used) | adnet (labelled slices, parts by count)"),
    "realistic_chunks": Key("aligned", (str,), REALISTIC_CHUNKS, doc="realistic protocol: "
                            "parts from the organ's place in the support (aligned) or the "
                            "query's body extent split evenly (body)"),
    "n_shots": Key(1, (int,), low=1),
    "support_idx": Key([-1], (list,)),
    "n_sup_part": Key(3, (int,), low=1),
    "z_margin": Key(0, (int,), low=0),
    "save_predictions": Key(True, (bool,)),
    "cross_dataset": Key(False, (bool,), doc="validation: evaluate a checkpoint trained on "
                         "another dataset (refused unless True)"),
    "eval_batch_size": Key(16, (int,), low=1),
    "n_overlay_slices": Key(3, (int,), low=0),
}
ex.add_config({name: key.default for name, key in KEYS.items()})


def derive(config: dict) -> dict:
    """Values of the DERIVED keys that were not given (``exclude_labels`` is resolved from
    ``dataset.json`` when the run starts: see :func:`resolve_exclude_labels`)."""
    # declared DERIVED only so that a named config's other type is no sacred type change
    out = {key: value for key, value in (("bf16", "auto"), ("channels_last", "auto"),
                                          ("label_sets", 0)) if config[key] is None}
    label_sets = out.get("label_sets", config["label_sets"])
    facts = folder_facts(config["data_dir"]) if config["data_dir"] is not None else None
    dataset = config["dataset"]
    if dataset is None:
        dataset = out["dataset"] = facts["name"] if facts else "CHAOST2"
    if config["data_dir"] is None:
        out["data_dir"] = f"./data/{dataset}"
        facts = folder_facts(out["data_dir"])
    setting = config["setting"]
    if setting is None:  # the original's Setting 2 on the published datasets, else Setting 1
        setting = out["setting"] = 2 if facts is None or (facts["preset"]
                                                           and facts["all_labelled"]) else 1
    if config["min_superpixel_px"] is None:
        out["min_superpixel_px"] = 100 if config["superpixel_draw"] == "uniform" else 1
    if config["exp_name"] is None:
        # Setting 1 trains one model for every label group: the group is not part of its name
        parts = (config["exp_prefix"], dataset, f"setting{setting}",
                 f"group{label_sets}" if setting == 2 else "",
                 config["pseudolabel"], config["superpix_scale"], f"fold{config['eval_fold']}")
        out["exp_name"] = "_".join(str(p) for p in parts if p != "")
    return out


def folder_facts(data_dir: str) -> dict | None:
    """The name in ``data_dir``'s dataset.json and whether every scan is labelled; None when
    there is no readable one (the run then stops on it with the loader's message)."""
    try:
        meta = read_json(Path(data_dir) / "dataset.json")
        labelled = set(meta.get("labelled", meta["cases"]))
        return {"name": str(meta["name"]), "n_cases": len(meta["cases"]),
                "n_labelled": len(labelled), "all_labelled": labelled >= set(meta["cases"]),
                "preset": bool(meta.get("preset") or meta["name"] in REGISTRY),
                "where": str(Path(data_dir) / "dataset.json")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_labels_needed(cfg: dict, command: str, n_labelled: int, n_cases: int,
                        where: str) -> None:
    """Stop in one line when the run needs labels that the folder lacks: Setting 2 (every scan),
    val_every, manual episodes and validation (some)."""
    needs = [what for what, needed in (
        ("validation", command == "validate"),
        ("setting=2", command == "train" and cfg["setting"] == 2),
        ("val_every > 0", command == "train" and cfg["val_every"] > 0),
        ("pseudolabel='manual'", command == "train" and cfg["pseudolabel"] == "manual"))
        if needed]
    if needs and n_labelled == 0:
        raise no_labels_error(where, " and ".join(needs))
    if "setting=2" in needs and n_labelled < n_cases:
        raise InputError(f"{where}: setting=2 removes every slice holding a test class, which "
                         f"needs every scan labelled; {n_labelled} of {n_cases} are; expects "
                         f"setting=1")


def resolve_exclude_labels(cfg: dict, ds) -> list[int]:
    """``exclude_labels`` as given, else the test classes of ``label_sets`` in Setting 2 (read
    from the dataset folder's ``dataset.json``, as the episodes are), else []."""
    if cfg["exclude_labels"] is not None:
        return list(cfg["exclude_labels"])
    return setting_exclusions(ds, cfg["setting"], cfg["label_sets"])


@ex.named_config
def chaost2():
    dataset = "CHAOST2"


@ex.named_config
def sabs():
    dataset = "SABS"


@ex.named_config
def cmr():
    dataset = "CMR"
    setting = 1                # the three structures share almost every slice (method.md §9.1)


@ex.named_config
def phantom():
    dataset = "PHANTOM"


@ex.named_config
def setting1():
    setting = 1


@ex.named_config
def setting2():
    setting = 2


@ex.named_config
def group0():
    label_sets = 0


@ex.named_config
def group1():
    label_sets = 1


@ex.named_config
def group2():
    label_sets = 2


@ex.named_config
def superpixels():
    pseudolabel = "superpixel"
    superpix_scale = "MIDDLE"


@ex.named_config
def supervoxels():
    pseudolabel = "supervoxel"
    superpix_scale = "SV5000"  # SV1000 for CMR (method.md §9.2)


@ex.named_config
def manual():
    pseudolabel = "manual"     # the manual-annotation baseline: training classes' labels


@ex.named_config
def quickstart():
    # the phantom on a CPU in minutes: tiny encoder, short schedule
    dataset = "PHANTOM"
    data_dir = "./data/PHANTOM"
    encoder = "tiny"
    setting = 1
    n_steps = 1500
    lr = 1e-2
    lr_step_size = 500
    num_workers = 2
    print_interval = 50
    image_every = 250
    save_snapshot_every = 500
    checkpoint_every = 250
    eval_batch_size = 32
    bf16 = False               # fixed, so the quickstart's Dice table is one reference everywhere
    channels_last = True


def check_config(config: dict) -> None:
    """Types and allowed values of every key, from :data:`KEYS`; raises ValueError naming the
    key, what it expects and what it got."""
    for name, key in KEYS.items():
        if name not in config:
            raise KeyError(f"config: key {name!r} is declared in KEYS but missing from the config")
        value = config[name]
        if value is None and key.default is DERIVED:
            continue  # derived later
        ok = isinstance(value, key.types) and not (isinstance(value, bool)
                                                   and bool not in key.types)
        if float in key.types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join("None" if t is _NONE else t.__name__ for t in key.types)
            raise InputError(f"config: {name} expects {names}, got {value!r} "
                             f"({type(value).__name__})")
        if key.choices is not None and value not in key.choices:
            raise InputError(f"config: {name} expects one of {list(key.choices)}, got {value!r}")
        if key.low is not None and isinstance(value, (int, float)) and (
                value < key.low or (key.positive and value <= key.low)):
            bound = f"> {key.low}" if key.positive else f">= {key.low}"
            raise InputError(f"config: {name} expects a value {bound}, got {value!r}")
    try:  # a preset's groups; a folder of one's own is checked against its dataset.json
        groups = len(get_dataset_info(config["dataset"]).label_groups) if config["dataset"] \
            else None
    except KeyError:
        groups = None
    if config["label_sets"] not in ("all", None) and not (isinstance(config["label_sets"], int)
                                              and 0 <= config["label_sets"] < (groups or 10**9)):
        allowed = f"0..{groups - 1}" if groups else "a group index >= 0"
        raise InputError(f"config: label_sets for {config['dataset']} expects {allowed} "
                         f"(or 'all' in validation), got {config['label_sets']!r}")
    if config["n_sup_part"] < 1 or config["n_sup_part"] % 2 == 0:
        raise InputError(f"config: n_sup_part expects a positive odd number, got "
                         f"{config['n_sup_part']}")
    if config["feature_hw"][0] % config["proto_grid_size"]:
        raise InputError(f"config: proto_grid_size {config['proto_grid_size']} must divide "
                         f"feature_hw {config['feature_hw']}")
    if config["n_shots"] > 1 and config["support_idx"] != [-1]:
        raise InputError(f"config: support_idx chooses the one support scan of 1-shot "
                         f"evaluation; with n_shots={config['n_shots']} the last "
                         f"{config['n_shots']} validation scans are the support, so expects "
                         f"support_idx=[-1], got {config['support_idx']}")
    if len(config["support_idx"]) != 1 or not isinstance(config["support_idx"][0], int):
        raise InputError(f"config: support_idx expects one scan index in a list, e.g. [-1], got "
                         f"{config['support_idx']}")
    if config["superpixel_draw"] == "original" and config["min_superpixel_px"] not in (None, 1):
        raise InputError(f"config: superpixel_draw='original' has no size check, so "
                         f"min_superpixel_px expects 1, got {config['min_superpixel_px']}")
    if config["slice_draw"] == "original" and config["pseudolabel"] != "superpixel":
        raise InputError(f"config: slice_draw='original' is the 2-D superpixel episodes' "
                         f"sampling; expects pseudolabel='superpixel', got "
                         f"{config['pseudolabel']!r}")
    if config["exclude_mode"] == "all" and config["pseudolabel"] != "supervoxel":
        raise InputError(f"config: exclude_mode='all' is the supervoxel episodes' original "
                         f"rule; expects pseudolabel='supervoxel', got {config['pseudolabel']!r}")


@ex.config_hook
def attach_observer(config, command_name, logger):
    """Validate, then give this run (and only this run) a file observer under log_dir."""
    if command_name in ("print_named_configs", "print_dependencies"):
        return {}
    check_config(config)
    updates = derive(config)
    if command_name == "print_config":
        return updates
    config = {**config, **updates}
    facts = folder_facts(config["data_dir"])
    if facts is not None:  # before a run folder is made for a run that cannot start
        check_labels_needed(config, command_name, facts["n_labelled"], facts["n_cases"],
                            facts["where"])
    if env_info().rank > 0:  # under torchrun only rank 0 writes the run folder
        ex.observers[:] = []
        return updates
    ensure_writable_dir(config["log_dir"], "log_dir")  # before any computation
    resolve_device(config["device"])  # a device this machine lacks: no run folder for that
    if command_name == "train" and not config["resume"] and config["pretrained_weights"]:
        check_pretrained(config["pretrained_weights"], config["encoder"])  # found or fetched
    folder = resumed_run_folder(config["resume"]) if command_name == "train" else None
    if folder is not None:  # a resumed run goes on in its own folder
        ex.observers[:] = [ContinuingObserver(folder)]
        return updates
    base = Path(config["log_dir"]) / command_name / config["exp_name"]
    ex.observers[:] = [RunFolderObserver(str(base))]
    return updates


class RunFolderObserver(FileStorageObserver):
    """sacred's file observer; a run that fails also gets a ``FAILED`` file in its folder with
    the error's last line, so a failed run folder is plain to see (run.json has the trace)."""

    def failed_event(self, fail_time, fail_trace):
        super().failed_event(fail_time, fail_trace)
        last = "".join(fail_trace).strip().splitlines()[-1:] if fail_trace else []
        (Path(self.dir) / "FAILED").write_text("\n".join(last) + "\n", encoding="utf-8")

    def completed_event(self, stop_time, result):
        super().completed_event(stop_time, result)
        (Path(self.dir) / "FAILED").unlink(missing_ok=True)  # a resume that finished the run


class ContinuingObserver(RunFolderObserver):
    """sacred's file observer writing into an existing run folder (``resume=``): metrics.json,
    cout.txt and the tensorboard events are appended to, the earlier run.json is kept as
    ``run.<n>.json`` and run.json describes the resumed segment. A resume that fails leaves the
    run as it was: its own record goes to ``run.<n>.resume_failed.json``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir.parent))
        self.run_dir = run_dir
        self.previous: Path | None = None

    def _make_run_dir(self, _id) -> None:
        self.dir = str(self.run_dir)
        current = self.run_dir / "run.json"
        if current.is_file():
            n = 1
            while (self.run_dir / f"run.{n}.json").exists():
                n += 1
            self.previous = self.run_dir / f"run.{n}.json"
            current.rename(self.previous)

    def failed_event(self, fail_time, fail_trace):
        FileStorageObserver.failed_event(self, fail_time, fail_trace)
        if self.previous is not None:
            failed = self.previous.with_name(self.previous.stem + ".resume_failed.json")
            os.replace(self.run_dir / "run.json", failed)
            os.replace(self.previous, self.run_dir / "run.json")


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


def _check_cli_keys(args: list[str]) -> None:
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
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=3)
            raise InputError(f"config: unknown key {key!r}"
                             + (f"; did you mean {' or '.join(map(repr, close))}?" if close
                                else "; see `python training.py print_config`"))


def run_cli(command: str, argv: list[str]) -> None:
    """``python <script>.py [with ...]`` runs ``command``: an expected error (bad config, input
    or file) is one line and exit status 2 (``--debug`` or ``SSL_DEBUG=1``: the traceback).
    sacred's own commands and options (``print_config``, ``-F`` …) pass through to sacred."""
    prog = Path(argv[0]).name
    debug = debug_requested(argv)
    args = argv[1:]
    if not args or args[0] not in ex.commands:
        args = [command, *args]
    try:
        _check_cli_keys(args)
    except ValueError as err:
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
    except SacredInterrupt as err:  # training.Preempted: checkpoint written, run INTERRUPTED
        print(f"{prog}: {err}", file=sys.stderr)
        sys.exit(128 + getattr(err, "signum", 0))
    except EXPECTED as err:
        if debug:
            raise
        fail(prog, message_of(err))
    finally:
        GIVEN_KEYS.clear()  # this command line's keys, not those of a later run in the process
