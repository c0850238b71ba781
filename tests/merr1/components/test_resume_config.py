"""Resume refuses changed settings that alter the trajectory (issue 15, item 2)."""

import json

import pytest
import torch
import yaml
from torch import nn

from merr1.components.checkpointing import DataPosition, TrainingCheckpointer
from merr1.components.optim import build_adamw
from merr1.components.resume_config import (
    NON_TRAJECTORY_KEYS,
    changed_settings,
    check_resume_settings,
    flatten_config,
    format_changes,
)

BASE = {
    "output_dir": "/runs/a",
    "seed": 0,
    "batch_size": 8,
    "num_generations": 4,
    "model": {"_component_": "merr1.components.models.tiny_thinker", "hidden_size": 128},
    "dataset": {"data_dir": "data/sample", "split": "rl"},
    "optimizer": {"lr": 1e-4, "betas": [0.9, 0.999]},
    "lr_scheduler": {"num_warmup_steps": 0, "min_lr_ratio": 1.0},
    "rewards": [{"_component_": "RecallReward"}, {"_component_": "FormatReward", "strict": True}],
    "advantage": {"groups": [{"name": "recall", "weight": 1.0}]},
    "loss": {"beta": 0.0},
    "log_every_n_steps": 1,
    "num_workers": 0,
    "save_every_n_steps": None,
    "keep_last_n_checkpoints": 2,
    "resume_from_checkpoint": False,
}


def _with(**changes):
    """BASE with dotted keys replaced (``"optimizer.lr": 2e-4``)."""
    config = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[leaf]
        elif isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return config


_DELETE = object()


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"a": 1, "b": {"c": [1, {"d": None}]}}, {"a": 1, "b.c.0": 1, "b.c.1.d": None}),
        ({"a": {}, "b": [], "c": (1, 2)}, {"a": {}, "b": [], "c.0": 1, "c.1": 2}),
    ],
)
def test_flatten_config(config, expected):
    assert flatten_config(config) == expected


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, []),
        ({"optimizer.lr": 2e-4}, ["optimizer.lr: 0.0001 -> 0.0002"]),
        ({"batch_size": 16, "seed": 1}, ["batch_size: 8 -> 16", "seed: 0 -> 1"]),
        ({"num_generations": 8}, ["num_generations: 4 -> 8"]),
        ({"rewards.1.strict": False}, ["rewards.1.strict: true -> false"]),
        ({"advantage.groups.0.weight": 0.5}, ["advantage.groups.0.weight: 1.0 -> 0.5"]),
        ({"loss.beta": 0.04}, ["loss.beta: 0.0 -> 0.04"]),
        ({"model.hidden_size": 64}, ["model.hidden_size: 128 -> 64"]),
        ({"dataset.data_dir": "/data/mer"}, ['dataset.data_dir: "data/sample" -> "/data/mer"']),
        ({"lr_scheduler.num_warmup_steps": 20}, ["lr_scheduler.num_warmup_steps: 0 -> 20"]),
        ({"optimizer.betas.1": 0.95}, ["optimizer.betas.1: 0.999 -> 0.95"]),
        ({"lr_scheduler.min_lr_ratio": _DELETE}, ["lr_scheduler.min_lr_ratio: 1.0 -> <unset>"]),
        ({"loss.kl": "k3"}, ['loss.kl: <unset> -> "k3"']),
        ({"rewards.1.strict": 1}, ["rewards.1.strict: true -> 1"]),  # a flag that became a number
        ({"optimizer.lr": 0.0001}, []),  # same value
        ({"batch_size": 8.0}, []),  # YAML may write an int as a float
        # Harmless: logging, saving, workers, output folder, the resume flag itself.
        ({"output_dir": "/runs/b", "log_every_n_steps": 10, "num_workers": 4, "save_every_n_steps": 100,
          "keep_last_n_checkpoints": 1, "resume_from_checkpoint": True, "resume_allow_changed": ["seed"],
          "enable_activation_checkpointing": True, "fsdp_reshard_after_forward": False}, []),  # fmt: skip
        ({"compile": True, "dtype": "bf16"}, ['compile: <unset> -> true', 'dtype: <unset> -> "bf16"']),  # numerics change
    ],
)
def test_changed_settings(changes, expected):
    assert format_changes(changed_settings(BASE, _with(**changes))) == expected


def test_check_refuses_listing_every_change_and_allows_named_keys_or_sections():
    current = _with(**{"optimizer.lr": 2e-4, "optimizer.betas.1": 0.95, "batch_size": 16, "log_every_n_steps": 5})
    with pytest.raises(ValueError) as info:
        check_resume_settings(BASE, current, checkpoint="out/checkpoints/step_40")
    message = str(info.value)
    assert message.startswith("cannot resume from out/checkpoints/step_40: these settings differ")
    for line in ("  batch_size: 8 -> 16\n", "  optimizer.betas.1: 0.999 -> 0.95\n", "  optimizer.lr: 0.0001 -> 0.0002\n"):
        assert line in message
    assert "log_every_n_steps" not in message
    assert "resume_allow_changed=[batch_size, optimizer.betas.1, optimizer.lr]" in message
    # Allowing one key leaves the other two refused.
    with pytest.raises(ValueError) as info:
        check_resume_settings(BASE, current, ["optimizer"])
    assert str(info.value).splitlines()[1:-1] == ["  batch_size: 8 -> 16"]
    allowed, unused = check_resume_settings(BASE, current, ["optimizer", "batch_size", "seed"])
    assert format_changes(allowed) == [
        "batch_size: 8 -> 16", "optimizer.betas.1: 0.999 -> 0.95", "optimizer.lr: 0.0001 -> 0.0002"
    ]  # fmt: skip
    assert unused == ["seed"]
    # "optimizer.l" is not a section of optimizer.lr.
    with pytest.raises(ValueError, match="optimizer.lr"):
        check_resume_settings(BASE, _with(**{"optimizer.lr": 2e-4}), ["optimizer.l"])


def test_non_trajectory_keys_are_config_keys_of_the_training_recipes():
    """Every harmless key names a key the SFT or GRPO recipe's CONFIG_SPEC declares (no stale entry)."""
    from recipes import grpo_mer_r1_distributed, sft_distributed

    def declared(spec, dotted):
        head, _, rest = dotted.partition(".")
        return head in spec and (not rest or (isinstance(spec[head], dict) and declared(spec[head], rest)))

    specs = [sft_distributed.CONFIG_SPEC, grpo_mer_r1_distributed.CONFIG_SPEC]
    missing = [k for k in NON_TRAJECTORY_KEYS if not any(declared(spec, k) for spec in specs)]
    assert missing == []


# --------------------------------------------------------------------------- through the checkpointer
def _model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, build_adamw(model, lr=0.1)


def test_resume_with_a_changed_lr_is_refused_then_allowed_and_recorded(tmp_path):
    model, optimizer = _model_and_optimizer()
    TrainingCheckpointer(tmp_path, config=BASE).save(model, optimizer, None, DataPosition(0, 40, 40))

    changed = _with(**{"optimizer.lr": 2e-4, "resume_from_checkpoint": True})
    with pytest.raises(ValueError, match=r"optimizer.lr: 0.0001 -> 0.0002"):
        TrainingCheckpointer(tmp_path, config=changed).load_latest(*_model_and_optimizer(), None)
    assert not list(tmp_path.glob("config.resumed*"))

    checkpointer = TrainingCheckpointer(tmp_path, config=changed, resume_allow_changed=["optimizer.lr"])
    checkpointer.load_latest(*_model_and_optimizer(), None)
    # This run's config is written next to the first run's, never over it.
    assert yaml.safe_load((tmp_path / "config.resumed_at_step_40.yaml").read_text())["optimizer"]["lr"] == 2e-4
    path = checkpointer.save(model, optimizer, None, DataPosition(0, 41, 41))
    history = json.loads((path / "meta.json").read_text())["resume_history"]
    assert history == [{"step": 40, "checkpoint": "step_40", "changed": {"optimizer.lr": ["0.0001", "0.0002"]}}]
    assert yaml.safe_load((path / "config.yaml").read_text())["optimizer"]["lr"] == 2e-4

    # The next resume compares with step_41's config (lr 2e-4): nothing changed, history carried over.
    again = TrainingCheckpointer(tmp_path, config=changed)
    again.load_latest(*_model_and_optimizer(), None)
    path = again.save(model, optimizer, None, DataPosition(0, 42, 42))
    assert json.loads((path / "meta.json").read_text())["resume_history"] == history
    assert (tmp_path / "config.resumed_at_step_41.yaml").is_file()


def test_resume_allow_changed_must_be_a_list(tmp_path):
    with pytest.raises(ValueError, match="resume_allow_changed must be a list of keys, got the string 'optimizer.lr'"):
        TrainingCheckpointer(tmp_path, resume_allow_changed="optimizer.lr")
