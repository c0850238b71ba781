"""The README's reward example and its wiring work as written (issue 16).

- ``<!-- example-reward -->``: the Python block, executed, scores like the shipped
  ``merr1.rewards.LengthPenalty`` (the same contract, the same numbers).
- ``<!-- example-reward-wiring -->``: the YAML block added to ``debug/grpo_mer_r1_tiny`` passes
  the recipe's reward/group check and gives a ``length`` reward and advantage group; one real
  `tune run` step of that config logs them.
"""

from __future__ import annotations

import re

import pytest
import yaml
from tune_helpers import REPO_ROOT, read_jsonl, tune_run

from merr1.rewards import LengthPenalty, RewardBatch, merge_outputs

README = (REPO_ROOT / "README.md").read_text()
TINY = REPO_ROOT / "recipes" / "configs" / "debug" / "grpo_mer_r1_tiny.yaml"


def block(marker: str, language: str) -> str:
    match = re.search(rf"^<!-- {marker} -->\n```{language}\n(.*?)```", README, re.S | re.M)
    assert match, f"README has no <!-- {marker} --> {language} block"
    return match.group(1)


def readme_reward_class():
    namespace: dict = {}
    exec(compile(block("example-reward", "python"), "README example-reward", "exec"), namespace)
    return namespace["LengthPenalty"]


def wired_config() -> dict:
    """debug/grpo_mer_r1_tiny with the README's rewards and groups appended."""
    cfg = yaml.safe_load(TINY.read_text())
    snippet = yaml.safe_load(block("example-reward-wiring", "yaml"))
    assert snippet["advantage"]["_component_"] == cfg["advantage"]["_component_"]
    cfg["rewards"] += snippet["rewards"]
    cfg["advantage"]["groups"] += snippet["advantage"]["groups"]
    return cfg


@pytest.mark.parametrize("unit", ["words", "chars"])
@pytest.mark.parametrize(("max_length", "buffer"), [(10, 4), (40, 10), (5, 5), (3, 1)])
def test_readme_example_reward_scores_like_the_shipped_one(unit, max_length, buffer):
    Example = readme_reward_class()
    assert Example.outputs == LengthPenalty.outputs == ("length",)
    responses = [["w " * n for n in range(0, 16)], ["x" * n for n in range(0, 32, 2)]]  # 2 prompts x G=16
    batch = RewardBatch(responses=responses, labels=[["happy"], []])
    mine = Example(max_length=max_length, buffer=buffer, unit=unit)(batch)
    shipped = LengthPenalty(max_length=max_length, buffer=buffer, unit=unit)(batch)
    assert set(mine.rewards) == {"length"} and mine.rewards["length"].shape == (2, 16)
    assert mine.rewards["length"].tolist() == shipped.rewards["length"].tolist()  # the same float32 values
    assert mine.rewards["length"].min() >= -1.0 and mine.rewards["length"].max() <= 0.0


def test_readme_wiring_passes_the_recipe_checks_and_adds_a_length_group():
    from torchtune import config as tt_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(wired_config())
    rewards = [tt_config.instantiate(node) for node in cfg.rewards if not node._component_.endswith("CalibrationRewards")]
    advantage = tt_config.instantiate(cfg.advantage)
    produced = {name for node in cfg.rewards for name in _outputs(node._component_)}
    assert advantage.reward_names <= produced  # what GRPORecipe._setup_rewards checks
    assert "length" in advantage.reward_names and [g.name for g in advantage.groups][-1] == "length"
    long = "<think>" + "word " * 60 + "</think><answer>happy</answer>"
    batch = RewardBatch(
        responses=[["<think>x</think><answer>happy</answer>", long, "<answer>sad</answer>", long]], labels=[["happy"]]
    )
    out = merge_outputs([reward(batch) for reward in rewards])
    assert out.rewards["length"].tolist() == [[0.0, -1.0, 0.0, -1.0]]  # 62 words > max_length 40


def _outputs(component: str) -> tuple[str, ...]:
    import importlib

    module, name = component.rsplit(".", 1)
    return getattr(importlib.import_module(module), name).outputs


def test_readme_wiring_runs_one_grpo_step(tmp_path):
    config = tmp_path / "grpo_length.yaml"
    config.write_text(yaml.safe_dump(wired_config(), sort_keys=False))
    out = tmp_path / "run"
    tune_run(
        "grpo_mer_r1_distributed",
        config,
        [f"output_dir={out}", "max_steps_per_epoch=1", "batch_size=2", "gradient_accumulation_steps=1",
         "num_generations=2", "generation.max_new_tokens=8"],
    )  # fmt: skip
    (row,) = read_jsonl(out / "metrics.jsonl")
    assert -1.0 <= row["reward/length/mean"] <= 0.0
    assert {"adv/length/reward_mean", "adv/length/reward_std", "adv/length/zero_std_frac"} <= row.keys()
