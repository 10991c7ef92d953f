"""The one sacred experiment of training.py and validation.py: every key, its type, its default.

Defaults are the original's (method.md §7.1). Named configs select a dataset, a setting, a label
group, a pseudolabel source, and the phantom quickstart::

    python training.py with chaost2 setting2 group0 eval_fold=3
    python training.py with quickstart
    python validation.py with chaost2 group1 reload_model_path=exps/.../snapshots/latest.pth

Each key is declared once, in :data:`KEYS` (default, types, allowed values, meaning, roles); the
checks, ``print_config`` and the role lists (:data:`ARCH_KEYS`, :data:`RESUME_MUST_MATCH`,
:data:`BEFORE_KEY`) come from there. sacred's read-only config stays on, an unknown key fails
(sacred: "Added new config entry"; on the command line with a suggestion), and a value of the
wrong type or outside its allowed values fails naming the key, what it expects and what it got.
Rules across keys and derived values are :mod:`dataloaders.config_rules`; run folders and the
command line are :mod:`util.runs`.
"""
from __future__ import annotations

from util import runs  # first: it imports sacred without pkg_resources' warning

from sacred import Experiment, SETTINGS  # noqa: E402

from dataloaders.augment import PRESETS as AUG_PRESETS  # noqa: E402
from dataloaders.episodes import (EXCLUDE_MODES, PSEUDOLABELS, SLICE_DRAWS,  # noqa: E402
                                  SUPERPIXEL_DRAWS)
from dataloaders.evaluation import PROTOCOLS, REALISTIC_CHUNKS  # noqa: E402
from models.alp import THRESHOLD  # noqa: E402
from models.alpnet import (EMPTY_PROTOTYPES, EVAL_WINDOW, FEATURE_HW, PROTOTYPES,  # noqa: E402
                           TRAIN_WINDOW)
from models.encoder import ENCODER_NAMES  # noqa: E402
from dataloaders import config_rules  # noqa: E402
from util.keys import DERIVED, NONE, UNSET, Key  # noqa: E402

# the run folder's log.txt records the log (util.runs); the code version is recorded there too
SETTINGS.CAPTURE_MODE = "no"
SETTINGS.DISCOVER_SOURCES = "none"

ex = Experiment("SSL-ALPNet", save_git_info=False)


# Every key of training.py and validation.py, declared once; defaults: the original's
# (method.md §7.1)
KEYS: dict[str, Key] = {
    # run
    "seed": Key(1234, (int,), low=0, resume=True),
    "device": Key("auto", (str,), doc="auto | cpu | cuda | cuda:N | mps"),
    "deterministic": Key(False, (bool,), doc="deterministic kernels (same seed -> same losses "
                                             "on a CPU)"),
    "num_workers": Key(4, (int,), low=0),
    # data
    "dataset": Key(DERIVED, (str,), resume=True,
                   doc="CHAOST2 | SABS | CMR | PHANTOM, or your own folder's name; default: the "
                       "name in data_dir's dataset.json, else CHAOST2"),
    "data_dir": Key(DERIVED, (str,), doc="default ./data/<dataset>"),
    "eval_fold": Key(0, (int,), low=0, resume=True),
    "label_sets": Key(DERIVED, (int, str), doc="label group whose classes are tested (default "
                                               "0); validation: 'all' scores every group in one "
                                               "run"),
    "setting": Key(DERIVED, (int,), (1, 2), doc="1: all slices; 2: slices with any test class "
                                                "never sampled; default 2 (the original's), 1 "
                                                "for a folder with unlabelled scans"),
    "exclude_labels": Key(DERIVED, (list,), resume=True,
                          doc="default: the test classes of label_sets in Setting 2 (from "
                              "dataset.json), [] in Setting 1"),
    "exclude_mode": Key("any", (str,), EXCLUDE_MODES, resume=True, before="any",
                        doc="supervoxel episodes, Setting 2: a slice is excluded when it holds "
                            "any test class (paper) or all of them (the original code)"),
    "pseudolabel": Key("superpixel", (str,), PSEUDOLABELS, resume=True),
    "superpix_scale": Key("MIDDLE", (str,), resume=True,
                          doc="pseudolabel variant: MIDDLE, SMALL, LARGE, SV<min_size>"),
    "superpixel_draw": Key("uniform", (str,), SUPERPIXEL_DRAWS, resume=True, before="uniform",
                           doc="uniform over the superpixels present, or the original's "
                               "UniformInt[1, max-1]"),
    "slice_draw": Key("uniform", (str,), SLICE_DRAWS, resume=True, before="uniform",
                      doc="uniform over the slices with a drawable pseudolabel, or the "
                          "original's shuffled epoch of 1000 indices modulo the slice count"),
    "min_superpixel_px": Key(DERIVED, (int,), resume=True,
                             doc="smallest pseudolabel an episode draws; default 100 (uniform "
                                 "draw), 1 (original draw)"),
    "min_fg_px": Key(100, (int,), doc="manual-label episodes: smallest organ area of a slice",
                     low=1, resume=True),
    "which_aug": Key("sabs_aug", (str,), tuple(AUG_PRESETS) + ("none",), resume=True,
                     doc="episode augmentation preset; none: the views as they are"),
    # model
    "encoder": Key("deeplabv3_resnet101", (str,), ENCODER_NAMES, arch=True, resume=True),
    "prototypes": Key(PROTOTYPES[0], (str,), PROTOTYPES, arch=True, resume=True, before="alp",
                      doc="alp, or the ablation 'global': one masked-average prototype for "
                          "foreground and background (PANet)"),
    "pretrained_weights": Key(None, (str, NONE), doc="coco, imagenet (torchvision's files via the "
                              "torch hub cache) or the path of a local copy"),
    "reload_model_path": Key(None, (str, NONE), doc="weights to evaluate: a .pth (ours or the "
                             "original's), a training run folder, 'latest' or 'best'"),
    "usealign": Key(True, (bool,), arch=True, resume=True),
    "use_wce": Key(True, (bool,), resume=True),
    "proto_grid_size": Key(FEATURE_HW // TRAIN_WINDOW, (int,), low=1, arch=True, resume=True),
    "feature_hw": Key([FEATURE_HW, FEATURE_HW], (list,), arch=True, resume=True),
    "val_wsize": Key(EVAL_WINDOW, (int,), low=1, arch=True),
    "fg_thresh": Key(THRESHOLD, (float,), low=0.0, arch=True, resume=True),
    "empty_prototypes": Key("fallback", (str,), EMPTY_PROTOTYPES, resume=True,
                            before="fallback",
                            doc="training: an empty local prototype set uses the mask's global "
                                "prototype (fallback), or the step is skipped without an "
                                "update (the original)"),
    "bg_thresh": Key(THRESHOLD, (float,), low=0.0, arch=True, resume=True),
    # optimisation
    "n_steps": Key(100000, (int,), low=1),
    "episodes_per_step": Key(1, (int,), low=1, resume=True, before=1,
                             doc="episodes averaged in one SGD step (1: the paper's); their "
                                 "images are encoded as one batch, so batch-norm statistics "
                                 "pool them (docs/training.md)"),
    "lr": Key(1e-3, (float,), low=0.0, positive=True, resume=True),
    "momentum": Key(0.9, (float,), low=0.0, resume=True),
    "weight_decay": Key(5e-4, (float,), low=0.0, resume=True),
    "lr_step_gamma": Key(0.95, (float,), low=0.0, positive=True, resume=True),
    "lr_step_size": Key(1000, (int,), low=1, resume=True),
    # logging and checkpoints
    "print_interval": Key(100, (int,), low=1),
    "image_every": Key(1000, (int,), low=1),
    "save_snapshot_every": Key(25000, (int,), low=1),
    "checkpoint_every": Key(500, (int,), low=1),
    "val_every": Key(0, (int,), doc="validate every N steps and at the end (0: off): "
                                    "val/dice/*, val_curve.csv/.png, snapshots/best.pth", low=0),
    "resume": Key(None, (str, NONE), doc="run folder or checkpoint file to continue from"),
    # declared DERIVED (None until "auto" is filled in) so that a named config's True / False is
    # not a type change that sacred warns about
    "bf16": Key(DERIVED, (bool, str), (True, False, "auto"), doc="bfloat16 autocast of the "
                "encoder; auto (default): where the hardware has it (CUDA with bf16, "
                "AVX512-BF16/AMX)"),
    "channels_last": Key(DERIVED, (bool, str), (True, False, "auto"), doc="memory layout only; "
                         "auto (default): CUDA and AVX-512 CPUs"),
    "compile": Key(False, (bool,), doc="torch.compile the episode's forward and the encoder "
                                       "(the first steps compile)"),
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

# the keys' roles, as lists
ARCH_KEYS = tuple(name for name, key in KEYS.items() if key.arch)
# a resumed run keeps these, and the number of processes (it decides the episodes)
RESUME_MUST_MATCH = tuple(name for name, key in KEYS.items() if key.resume) + ("world_size",)
# what checkpoints written before a key existed were trained with
BEFORE_KEY = {"world_size": 1, **{name: key.before for name, key in KEYS.items()
                                  if key.before is not UNSET}}
ARCH_BEFORE = {name: BEFORE_KEY[name] for name in ARCH_KEYS if name in BEFORE_KEY}
# what a bare state dict of the original code is assumed to have been trained with: the
# original's defaults (its encoder is the configured one)
ORIGINAL_ASSUMED = {name: KEYS[name].default for name in ARCH_KEYS if name != "encoder"}


NAMED_CONFIGS = {
    "chaost2": {"dataset": "CHAOST2"},
    "sabs": {"dataset": "SABS"},
    # the three structures share almost every slice (method.md §9.1): Setting 1
    "cmr": {"dataset": "CMR", "setting": 1},
    "phantom": {"dataset": "PHANTOM"},
    "setting1": {"setting": 1},
    "setting2": {"setting": 2},
    "group0": {"label_sets": 0},
    "group1": {"label_sets": 1},
    "group2": {"label_sets": 2},
    "superpixels": {"pseudolabel": "superpixel", "superpix_scale": "MIDDLE"},
    # SV1000 for CMR (method.md §9.2)
    "supervoxels": {"pseudolabel": "supervoxel", "superpix_scale": "SV5000"},
    # the manual-annotation baseline: episodes from the training classes' labels
    "manual": {"pseudolabel": "manual"},
    # the phantom on a CPU in minutes: tiny encoder, short schedule; bf16 fixed, so that the
    # quickstart's Dice table is one reference everywhere
    "quickstart": {"dataset": "PHANTOM", "data_dir": "./data/PHANTOM", "encoder": "tiny",
                   "setting": 1, "n_steps": 1500, "lr": 1e-2, "lr_step_size": 500,
                   "num_workers": 2, "print_interval": 50, "image_every": 250,
                   "save_snapshot_every": 500, "checkpoint_every": 250, "eval_batch_size": 32,
                   "bf16": False, "channels_last": True},
}
for _name, _values in NAMED_CONFIGS.items():
    ex.add_named_config(_name, _values)


SACRED_COMMANDS = ("print_named_configs", "print_dependencies")  # no config to check


@ex.config_hook
def checked_config(config, command_name, logger):
    """Check every key and their combinations, fill in the derived ones, refuse a run that
    cannot start (:mod:`dataloaders.config_rules`), then give the run its folder
    (:func:`util.runs.attach_run_folder`)."""
    if command_name in SACRED_COMMANDS:
        return {}
    for name, key in KEYS.items():  # type and allowed values, naming the key
        key.check(name, config[name])
    config_rules.check_combinations(config)
    updates = config_rules.derive(config)
    if command_name != "print_config":
        config_rules.refuse_unstartable({**config, **updates}, command_name)
        runs.attach_run_folder(ex, {**config, **updates}, command_name)
    return updates
