"""The rules of the configuration that no single key declares: combinations of keys, the values
derived from others, and what stops a run before its folder exists. Called by the config hook
of :mod:`config_ssl_upload`, where each key is declared."""
from __future__ import annotations

from pathlib import Path

from data_preprocessing import contract
from data_preprocessing.registry import get_dataset_info
from util.device import resolve_device
from util.errors import InputError, MissingInput


def derive(config: dict) -> dict:
    """Values of the DERIVED keys that were not given (``exclude_labels`` is resolved from
    ``dataset.json`` when the run starts: :func:`dataloaders.episodes.resolve_exclude_labels`)."""
    # declared DERIVED only so that a named config's other type is no sacred type change
    out = {key: value for key, value in (("bf16", "auto"), ("channels_last", "auto"),
                                          ("label_sets", 0)) if config[key] is None}
    label_sets = out.get("label_sets", config["label_sets"])
    facts = contract.folder_facts(config["data_dir"]) if config["data_dir"] is not None else None
    dataset = config["dataset"]
    if dataset is None:
        dataset = out["dataset"] = facts["name"] if facts else "CHAOST2"
    if config["data_dir"] is None:
        out["data_dir"] = f"./data/{dataset}"
        facts = contract.folder_facts(out["data_dir"])
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


def check_combinations(config: dict) -> None:
    """What one key's declaration cannot say: a label group the dataset has, values that only
    make sense together. Raises :class:`InputError` naming the key, what it expects and what it
    got."""
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


def refuse_unstartable(config: dict, command: str) -> None:
    """Stop, before a run folder exists, a run that cannot start: training on 'all' groups, a
    resume target that does not exist, labels it needs that the folder lacks, a device this
    machine lacks. (training.py adds the pretrained file's check.)"""
    if command == "train" and config["label_sets"] == "all":
        raise InputError("config: label_sets='all' is for validation; training takes one label "
                         "group (Setting 2) or trains for every group at once (Setting 1)")
    if command == "train" and config["resume"] is not None \
            and not Path(config["resume"]).exists():
        raise MissingInput(f"{config['resume']}: expected a checkpoint file or a run folder "
                           f"to resume, found nothing there")
    facts = contract.folder_facts(config["data_dir"])
    if facts is not None:
        contract.check_labels_needed(config, command, facts["n_labelled"], facts["n_cases"],
                                     facts["where"])
    resolve_device(config["device"])
