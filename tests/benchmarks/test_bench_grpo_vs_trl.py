"""bench_grpo_vs_trl.py: config mapping, reward wrappers, and (with TRL installed) a smoke run.

TRL is not a merr1 dependency: the tests that need it are skipped without it (run them with
the ``bench`` extra installed, or ``PYTHONPATH=<folder with trl and accelerate>``).
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grpo_vs_trl.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_grpo_vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
SMALL = ["--prompts-per-step", "4", "--micro-batch-prompts", "2", "--num-generations", "2", "--max-new-tokens", "6"]


def test_merr1_config_is_the_text_only_rd_ad_variant(tmp_path):
    args = bench.parse_args(SMALL + ["--warmup", "1", "--steps", "2"])
    cfg = bench.merr1_config(args, tmp_path / "ckpt", tmp_path / "out")
    assert cfg.model._component_ == "merr1.components.models.tiny_qwen2"
    assert cfg.checkpoint_dir == str(tmp_path / "ckpt") and cfg.calibration is None
    assert list(cfg.dataset.modalities) == [] and cfg.dataset.system_prompt is None
    assert cfg.dataset.instruction == "List the emotions." and cfg.dataset.split == "rl"
    assert [r._component_.rsplit(".", 1)[1] for r in cfg.rewards] == ["RecallReward", "PrecisionReward", "FormatReward"]
    groups = [(g.name, g.weight, dict(g.rewards)) for g in cfg.advantage.groups]
    assert groups == [
        ("recall", 1.0, {"recall": 1.0}), ("precision", 1.0, {"precision": 1.0}), ("format", 0.1, {"format": 1.0})
    ]
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.num_generations) == (2, 2, 2)
    generation = cfg.generation
    assert (generation.max_new_tokens, list(generation.stop_strings), generation.temperature) == (6, [], 1.0)
    assert (cfg.loss.beta, cfg.num_iterations, cfg.max_steps_per_epoch, cfg.shuffle) == (0.0, 1, 3, False)


@pytest.mark.parametrize(
    "completion, labels, expected",
    [
        ("<think>x</think><answer>happy, sad</answer>", ["happy"], {"recall": 1.0, "format": 1.0}),
        ("<think>x</think><answer>happy</answer>", ["happy", "angry"], {"recall": 0.5, "precision": 1.0}),
        ("no tags at all", ["happy"], {"recall": 0.0, "precision": 0.0, "format": 0.0}),
    ],
)
def test_trl_reward_functions_return_merr1_rewards(tmp_path, completion, labels, expected):
    cfg = bench.merr1_config(bench.parse_args(SMALL), tmp_path, tmp_path)
    functions = {f.__name__: f for f in bench.trl_reward_functions(cfg)}
    assert sorted(functions) == ["format", "precision", "recall"]
    for name, value in expected.items():
        # TRL calls reward(prompts=..., completions=..., completion_ids=..., <dataset columns>, trainer_state=...)
        out = functions[name](prompts=["p", "p"], completions=[completion, completion], completion_ids=[[], []],
                              emotions=[labels, labels], trainer_state=None)  # fmt: skip
        assert out == pytest.approx([value, value])


def test_summarize_takes_medians():
    side = bench.Side("x", prompt_lengths=[10.0, 20.0])
    for wall, cpu in ((1.0, 0.5), (3.0, 1.0), (2.0, 2.0)):
        split = {"generate": wall / 2, "score": 0.0, "train": wall / 2, "other": 0.0}
        side.steps.append(bench.StepTime(wall, cpu, split, num_completions=8, completion_tokens=4.0))
    row = bench.summarize(side)
    assert row["step_wall"] == 2.0 and row["step_cpu"] == 1.0
    assert row["rollouts_per_s"] == 4.0 and row["rollouts_per_cpu_s"] == 8.0
    assert row["generate"] == 1.0 and row["prompt_tokens"] == 15.0


def test_trl_config_maps_the_step_to_the_same_work(tmp_path):
    pytest.importorskip("trl")
    args = bench.parse_args(SMALL)
    cfg = bench.merr1_config(args, tmp_path, tmp_path)
    trl_args = bench.trl_config(args, tmp_path / "trl", cfg)
    G = args.num_generations
    # completions per optimizer step: TRL counts completions, merr1 prompts
    completions = cfg.batch_size * cfg.gradient_accumulation_steps * G
    assert trl_args.per_device_train_batch_size * trl_args.gradient_accumulation_steps == completions
    assert trl_args.generation_batch_size == args.prompts_per_step * G  # one generation per optimizer step
    assert trl_args.steps_per_generation == trl_args.gradient_accumulation_steps
    assert (trl_args.num_generations, trl_args.max_completion_length) == (G, 6)
    assert (trl_args.beta, trl_args.num_iterations, trl_args.loss_type) == (0.0, 1, "grpo")
    assert not trl_args.bf16 and not trl_args.gradient_checkpointing and trl_args.use_cpu
    assert trl_args.learning_rate == pytest.approx(float(cfg.optimizer.lr))


def test_smoke_run_both_trainers_do_the_same_work():
    pytest.importorskip("trl")
    torch.manual_seed(0)
    rows = bench.main(SMALL + ["--warmup", "1", "--steps", "1"])
    assert set(rows) == {"merr1", "TRL"}
    for row in rows.values():
        assert row["rollouts_per_s"] > 0 and row["step_cpu"] > 0
        assert 0 < row["completion_tokens"] <= 6
    assert rows["merr1"]["prompt_tokens"] == rows["TRL"]["prompt_tokens"]
