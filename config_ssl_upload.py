"""The one sacred experiment of training.py and validation.py: every key, its type, its default.

Defaults are the original's (SPEC §7.1). Named configs select a dataset, a setting, a label group,
a pseudolabel source, and the phantom quickstart::

    python training.py with chaost2 setting2 group0 eval_fold=3
    python training.py with quickstart
    python validation.py with chaost2 group1 reload_model_path=exps/.../snapshots/latest.pth

sacred's read-only config stays on, an unknown key fails (sacred: "Added new config entry"), and a
value of the wrong type fails with the key, the expected type and the value found.
"""
from __future__ import annotations

import difflib
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
from sacred import Experiment, SETTINGS  # noqa: E402  (sacred 0.8.7 imports pkg_resources)
from sacred.observers import FileStorageObserver  # noqa: E402

from data_preprocessing.registry import get_dataset_info  # noqa: E402
from util.distributed import env_info  # noqa: E402

SETTINGS.CAPTURE_MODE = "no"
SETTINGS.DISCOVER_SOURCES = "none"

ex = Experiment("SSL-ALPNet", save_git_info=False)

# key -> accepted types (None allowed where listed); checked for every run.
SCHEMA: dict[str, tuple[type, ...]] = {
    "seed": (int,), "device": (str,), "deterministic": (bool,), "num_workers": (int,),
    "dataset": (str,), "data_dir": (str,), "eval_fold": (int,), "label_sets": (int,),
    "setting": (int,), "exclude_labels": (list,), "pseudolabel": (str,),
    "superpix_scale": (str,), "min_superpixel_px": (int,), "min_fg_px": (int,), "which_aug": (str,),
    "episodes_per_epoch": (int,), "encoder": (str,), "pretrained_weights": (str, type(None)),
    "reload_model_path": (str, type(None)), "usealign": (bool,), "use_wce": (bool,),
    "proto_grid_size": (int,), "feature_hw": (list,), "val_wsize": (int,),
    "fg_thresh": (float,), "bg_thresh": (float,), "n_steps": (int,), "lr": (float,),
    "momentum": (float,), "weight_decay": (float,), "lr_step_gamma": (float,),
    "lr_step_size": (int,), "print_interval": (int,), "image_every": (int,),
    "save_snapshot_every": (int,), "checkpoint_every": (int,), "val_every": (int,), "resume": (str, type(None)),
    "bf16": (bool, str), "channels_last": (bool, str), "compile": (bool,), "log_dir": (str,),
    "exp_prefix": (str,), "exp_name": (str,), "protocol": (str,), "n_shots": (int,),
    "support_idx": (list,), "n_sup_part": (int,), "z_margin": (int,), "save_predictions": (bool,),
    "eval_batch_size": (int,), "n_overlay_slices": (int,),
}
CHOICES = {
    "pseudolabel": ("superpixel", "supervoxel", "manual"),
    "which_aug": ("sabs_aug", "aug_v3"),
    "protocol": ("paper", "realistic"),
    "setting": (1, 2),
    "bf16": (True, False, "auto"),
    "channels_last": (True, False, "auto"),
}


@ex.config
def config():
    seed = 1234
    device = "auto"            # auto | cpu | cuda | cuda:N | mps
    deterministic = False      # deterministic torch kernels (same seed -> same losses on CPU)
    num_workers = 4
    # data
    dataset = "CHAOST2"        # CHAOST2 | SABS | CMR | PHANTOM
    data_dir = f"./data/{dataset}"
    eval_fold = 0
    label_sets = 0             # label group: its classes are kept out of testing
    setting = 2                # 1: all slices; 2: slices with any test class never sampled
    exclude_labels = (get_dataset_info(dataset).test_labels(label_sets) if setting == 2
                      else [])
    pseudolabel = "superpixel"  # superpixel | supervoxel | manual
    superpix_scale = "MIDDLE"  # pseudolabel variant: MIDDLE, SMALL, LARGE, SV<min_size>
    min_superpixel_px = 100    # smallest pseudolabel (px) an episode may draw: body-mask
    #                            fragments of a few px vanish under augmentation (empty episodes)
    min_fg_px = 100            # manual-label episodes: smallest organ area (px) of a slice
    which_aug = "sabs_aug"
    episodes_per_epoch = 1000  # the original's max_iters_per_load
    # model
    encoder = "deeplabv3_resnet101"  # deeplabv3_resnet101 | deeplabv3_resnet50 | tiny
    pretrained_weights = None  # local torchvision DeepLabV3 COCO checkpoint (.pth)
    reload_model_path = None   # weights to start from / evaluate: a .pth (ours or the original's),
    #                            a training run folder, or "latest" (validation: the newest
    #                            training run of this exp_name under log_dir/train)
    usealign = True
    use_wce = True
    proto_grid_size = 8
    feature_hw = [32, 32]
    val_wsize = 2
    fg_thresh = 0.95
    bg_thresh = 0.95
    # optimisation
    n_steps = 100000
    lr = 1e-3
    momentum = 0.9
    weight_decay = 5e-4
    lr_step_gamma = 0.95
    lr_step_size = 1000
    # logging and checkpoints
    print_interval = 100
    image_every = 1000
    save_snapshot_every = 25000
    checkpoint_every = 500
    val_every = 0              # validate on the fold's support/query scans every N steps and at
    #                            the end (0: off): val/dice/*, val_curve.csv/.png, snapshots/best.pth
    resume = None              # run folder or checkpoint file to continue from
    bf16 = "auto"              # bfloat16 autocast of the encoder: True | False | auto (where the
    #                            hardware has it: CUDA with bf16, CPUs with AVX512-BF16 or AMX)
    channels_last = "auto"     # memory layout only: True | False | auto (CUDA, AVX-512 CPUs)
    compile = False
    log_dir = "./exps"
    exp_prefix = ""
    # Setting 1 trains one model for every label group, so the group is not part of its name
    exp_name = "_".join(s for s in (exp_prefix, dataset, f"setting{setting}",
                                    f"group{label_sets}" if setting == 2 else "", pseudolabel,
                                    superpix_scale, f"fold{eval_fold}") if s)
    # evaluation
    protocol = "paper"         # paper (SPEC §6) | realistic (every slice, no query GT used)
    n_shots = 1
    support_idx = [-1]
    n_sup_part = 3
    z_margin = 0
    save_predictions = True
    eval_batch_size = 16
    n_overlay_slices = 3


@ex.named_config
def chaost2():
    dataset = "CHAOST2"


@ex.named_config
def sabs():
    dataset = "SABS"


@ex.named_config
def cmr():
    dataset = "CMR"
    setting = 1                # the three structures share almost every slice (SPEC §9.1)


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
    superpix_scale = "SV5000"  # SV1000 for CMR (SPEC §9.2)


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
    """Types and choices of every key; raises ValueError naming the key."""
    for key, types in SCHEMA.items():
        if key not in config:
            raise KeyError(f"config: key {key!r} is declared in SCHEMA but missing from the "
                           f"config scope")
        value = config[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"config: {key} expects {names}, got {value!r} "
                             f"({type(value).__name__})")
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ValueError(f"config: {key} expects one of {list(allowed)}, got {config[key]!r}")
    info = get_dataset_info(config["dataset"])
    if not 0 <= config["label_sets"] < len(info.label_groups):
        raise ValueError(f"config: label_sets for {info.name} expects 0.."
                         f"{len(info.label_groups) - 1}, got {config['label_sets']}")
    if config["n_sup_part"] < 1 or config["n_sup_part"] % 2 == 0:
        raise ValueError(f"config: n_sup_part expects a positive odd number, got "
                         f"{config['n_sup_part']}")
    if config["feature_hw"][0] % config["proto_grid_size"]:
        raise ValueError(f"config: proto_grid_size {config['proto_grid_size']} must divide "
                         f"feature_hw {config['feature_hw']}")


@ex.config_hook
def attach_observer(config, command_name, logger):
    """Validate, then give this run (and only this run) a file observer under log_dir."""
    if command_name in ("print_config", "print_named_configs", "print_dependencies"):
        return {}
    check_config(config)
    if env_info().rank > 0:  # under torchrun only rank 0 writes the run folder
        ex.observers[:] = []
        return {}
    base = Path(config["log_dir"]) / command_name / config["exp_name"]
    ex.observers[:] = [FileStorageObserver(str(base))]
    return {}


def _check_cli_keys(args: list[str]) -> None:
    """Fail early, with a suggestion, on ``with key=value`` naming no config key."""
    if "with" not in args:
        return
    for token in args[args.index("with") + 1:]:
        if "=" not in token:
            if token not in ex.named_configs:
                close = difflib.get_close_matches(token, list(ex.named_configs), n=3)
                raise SystemExit(f"config: no named config {token!r}"
                                 + (f"; did you mean {' or '.join(map(repr, close))}?" if close
                                    else f"; known: {sorted(ex.named_configs)}"))
            continue
        key = token.split("=", 1)[0].split(".", 1)[0]
        if key not in SCHEMA:
            close = difflib.get_close_matches(key, list(SCHEMA), n=3)
            raise SystemExit(f"config: unknown key {key!r}"
                             + (f"; did you mean {' or '.join(map(repr, close))}?" if close
                                else "; see `python training.py print_config`"))


def run_cli(command: str, argv: list[str]) -> None:
    """``python <script>.py [with ...]`` runs ``command``; sacred's own commands pass through."""
    args = argv[1:]
    if not args or args[0] not in ex.commands:
        args = [command, *args]
    _check_cli_keys(args)
    ex.run_commandline([argv[0], *args])
