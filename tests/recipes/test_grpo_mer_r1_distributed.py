"""recipes/grpo_mer_r1_distributed.py through the literal `tune run` commands (issue 6).

Most runs start from a short tiny SFT run (``tiny_sft_checkpoint``) so rewards, advantages and
gradients are non-trivial; the per-variant configs are exercised in test_grpo_variants.py.
"""

import argparse
import signal
import subprocess
import time

import pytest
import torch
from numerics import assert_close_to_scale
from omegaconf import OmegaConf
from tune_helpers import REPO_ROOT, TUNE, read_jsonl, tune_env, tune_run

RECIPE = "recipes/grpo_mer_r1_distributed.py"
CONFIG = "recipes/configs/debug/grpo_mer_r1_tiny.yaml"
SMALL = ["gradient_accumulation_steps=1", "generation.max_new_tokens=32"]


def test_two_ranks_and_one_fsdp_rank_match_one_process(tmp_path, tiny_sft_checkpoint):
    """Same global batch: 2 gloo ranks x 2 prompts == 1 FSDP rank (torchrun, --nproc_per_node 1)
    x 4 prompts == 1 plain process x 4 prompts (per-row sampling seeds)."""
    common = [f"checkpoint_dir={tiny_sft_checkpoint}", "max_steps_per_epoch=3", "shuffle=false", *SMALL]
    tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path / 'one'}", "batch_size=4", *common])
    tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path / 'two'}", "batch_size=2", *common], nproc=2)
    tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path / 'fsdp1'}", "batch_size=4", *common], nproc=1)
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    fsdp1 = read_jsonl(tmp_path / "fsdp1" / "metrics.jsonl")
    assert len(one) == len(two) == len(fsdp1) == 3
    assert one[0]["reward/recall/mean"] > 0  # non-trivial rollouts
    assert any(row["grad_norm"] > 0 for row in one)
    for a, b in [*zip(one, two), *zip(one, fsdp1)]:
        for key in ("reward/recall/mean", "reward/precision/mean", "reward/format/mean", "response_length/mean"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
        for key in ("reward/cali_pos/mean", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["step"], key)


def test_metrics_samples_and_reference_model(tmp_path, tiny_sft_checkpoint):
    out = tmp_path / "beta"
    proc = tune_run(
        RECIPE, CONFIG,
        [f"output_dir={out}", f"checkpoint_dir={tiny_sft_checkpoint}", "max_steps_per_epoch=2", "batch_size=2",
         "loss.beta=0.05", "log_samples_every_n_steps=1", "rewards.2.strict=false", *SMALL],
    )  # fmt: skip
    assert "reference model: built (beta = 0.05)" in proc.stderr
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.rewards[2].strict is False  # a list item overridden from the command line (issue 11)
    assert saved.rewards[2].scheme == "think_answer" and len(saved.rewards) == 4
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    expected = [
        "reward/recall/mean", "reward/recall/std", "reward/precision/mean", "reward/format/mean",
        "reward/cali_pos/mean", "reward/cali_neg/mean", "adv/recall/zero_std_frac", "adv/zero_std_frac",
        "response_length/mean", "num_predicted_categories", "loss", "loss/policy", "loss/kl",
        "loss/clip_frac_low", "loss/ratio_mean", "grad_norm", "lr", "time/generate", "time/score",
        "time/calibrate", "time/train", "rollout_tokens_per_second", "rollouts_per_second",
    ]  # fmt: skip
    for key in expected:
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["loss/kl"] == 0.0  # the policy is the reference at step 1
    assert rows[1]["loss/kl"] > 0.0
    samples = read_jsonl(out / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 2}
    assert {"name", "labels", "response", "rewards", "advantage"} <= set(samples[0])


def test_beta_zero_builds_no_reference_and_untagged_responses_do_not_crash(tmp_path):
    """From a random tiny model: responses have no tags, every reward is 0, the step still runs."""
    out = tmp_path / "random"
    proc = tune_run(RECIPE, CONFIG, [f"output_dir={out}", "max_steps_per_epoch=2", "batch_size=2", *SMALL])
    assert "reference model: none (beta = 0)" in proc.stderr
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert row["reward/format/mean"] == 0.0 and row["reward/recall/mean"] == 0.0
        assert row["adv/zero_std_frac"] == 1.0 and row["grad_norm"] == 0.0
    assert (out / "hf" / "config.json").is_file()
    # save_every_n_steps null: one resumable checkpoint at the end, with its own HF weights.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_2"]
    assert (out / "checkpoints" / "step_2" / "hf" / "config.json").is_file()


def test_sigterm_saves_and_resume_continues_exactly(tmp_path, tiny_sft_checkpoint):
    common = [f"checkpoint_dir={tiny_sft_checkpoint}", "max_steps_per_epoch=10", "batch_size=2", *SMALL]
    tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path / 'full'}", *common])
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")

    part = tmp_path / "part"
    proc = subprocess.Popen(
        [TUNE, "run", RECIPE, "--config", CONFIG, f"output_dir={part}", *common],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=tune_env(),
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        metrics = part / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 143, output[-4000:]  # 128 + SIGTERM: a SLURM script requeues on it
    assert "preempted (SIGTERM)" in output
    stopped = len(read_jsonl(part / "metrics.jsonl"))
    assert 2 <= stopped < 10

    tune_run(RECIPE, CONFIG, [f"output_dir={part}", "resume_from_checkpoint=true", *common])
    resumed = read_jsonl(part / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 11))
    for a, b in zip(full, resumed):
        for key in ("reward/recall/mean", "reward/precision/mean", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["step"], key, stopped)


def test_all_equal_group_contributes_no_gradient(tmp_path, tiny_sft_checkpoint, monkeypatch):
    """In-process: a group whose rewards are all equal has zero advantage, and the update's
    gradient equals the gradient computed without that group's rollouts."""
    from recipes.grpo_mer_r1_distributed import GRPORecipe

    monkeypatch.chdir(REPO_ROOT)
    cfg = OmegaConf.load(REPO_ROOT / CONFIG)
    cfg.output_dir = str(tmp_path / "inproc")
    cfg.checkpoint_dir = str(tiny_sft_checkpoint)
    cfg.batch_size = 2
    cfg.gradient_accumulation_steps = 1
    cfg.generation.max_new_tokens = 24
    recipe = GRPORecipe(cfg)
    recipe.setup(cfg)
    _, (batch,) = next(recipe._loader.steps(recipe._position))
    rollout = recipe._rollout(batch)
    G = recipe._group_size
    advantages = torch.tensor([0.0] * G + [1.0, -1.0] + [0.0] * (G - 2))  # group 0: all equal

    def gradient(rows):
        recipe._model.zero_grad(set_to_none=True)
        logprobs, _ = recipe._response_logprobs(recipe._model, rollout, rows)
        loss, _ = recipe._loss(logprobs, advantages[rows], rollout.response_mask[rows], normalizer=2 * G)
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in recipe._model.parameters()]

    with_group0, without = gradient(slice(0, 2 * G)), gradient(slice(G, 2 * G))
    for a, b in zip(with_group0, without):
        # Batch-composition rounding only: the per-parameter sums run over other rows in another
        # order, ~n x 6e-8 of the largest entry (n ~ 10^3 tokens); judged against that entry, not
        # element by element (an entry near 0 would need the largest entry's round-off as atol).
        assert_close_to_scale(a, b, rtol=1e-4, what="gradient")
    assert any(g.abs().sum() > 0 for g in without)
    recipe.cleanup()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"generation": {"temperature": 0.0}}, "generation.temperature: 0.0 must be > 0"),
        ({"fsdp_cpu_offload": True}, "fsdp_cpu_offload keeps FSDP-sharded GPU parameters"),
    ],
)
def test_settings_that_cannot_train_are_refused_at_construction(tmp_path, monkeypatch, override, message):
    from recipes.grpo_mer_r1_distributed import GRPORecipe

    monkeypatch.chdir(REPO_ROOT)
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / CONFIG), override, {"output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=message):
        GRPORecipe(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["generation.topk=5"], "generation.topk: unknown key; generation accepts decode_backend, max_new_tokens, "
                                "stop_strings, temperature, top_k, top_p"),
        (["rewards.9.strict=true"], "override 'rewards.9.strict=true': rewards has 4 items (indices 0..3)"),
    ],
)
def test_config_errors_come_before_the_data_set_is_built(tmp_path, overrides, expected):
    """The literal command; a data_dir that does not exist: the config error must come first."""
    proc = tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path}", f"dataset.data_dir={tmp_path / 'no_data'}", *overrides],
                    check=False)  # fmt: skip
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert "track2_train" not in proc.stderr  # the data set was not read
    assert not (tmp_path / "no_data").exists() and not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["optimizer.lr=fast"], "optimizer.lr: 'fast' is not a number (merr1.components.optim.build_adamw takes lr"),
        (["optimizer.lerning_rate=1e-4"], "optimizer.lerning_rate: unknown key; merr1.components.optim.build_adamw "
                                          "accepts betas, eps, lr, weight_decay"),
        (["max_steps_per_epoch=abc"], "max_steps_per_epoch: 'abc' is not an int"),
        (["loss.aggregation=mean"], "loss.aggregation: 'mean' is not one of 'grpo', 'dapo', 'dr_grpo'"),
        (["calibration.confidence=7"], "calibration.confidence: 7 is not a string"),
        (["rewards.2.strict=maybe", "rewards.1.duplicate_penalty=false"], "rewards.2.strict: 'maybe' is not a bool"),
        (["num_generations=1"], "num_generations: 1 must be >= 2"),  # G = 1 trains nothing (issue 15)
        (["save_every_n_steps=0"], "save_every_n_steps: 0 must be >= 1"),
        (["keep_last_n_checkpoints=0"], "keep_last_n_checkpoints: 0 must be >= 1"),
        (["resume_allow_changed=optimizer.lr"], "resume_allow_changed: 'optimizer.lr' is not a list of a string"),
    ],
)
def test_config_errors_name_the_dotted_key_the_value_and_what_is_accepted(tmp_path, monkeypatch, overrides, expected):
    """In-process, through the same argv rewrite as the command line (list items included)."""
    from torchtune.config._utils import _merge_yaml_and_cli_args

    from merr1.components.config_checks import expand_list_item_overrides
    from recipes.grpo_mer_r1_distributed import GRPORecipe

    monkeypatch.chdir(REPO_ROOT)
    argv = expand_list_item_overrides(["recipe", "--config", CONFIG, f"output_dir={tmp_path}", *overrides])
    yaml_args = argparse.Namespace(**OmegaConf.to_container(OmegaConf.load(CONFIG)))
    cfg = _merge_yaml_and_cli_args(yaml_args, argv[3:])
    with pytest.raises(ValueError) as err:
        GRPORecipe(cfg)
    assert expected in str(err.value)
    assert len(str(err.value).splitlines()) == 2  # exactly one problem: the other overrides are fine


def test_tracking_progress_samples_and_rollout_batches(tmp_path, tiny_sft_checkpoint, monkeypatch):
    """One 2-step run with a torchtune DiskLogger, unthrottled plain progress lines and one prompt
    per generate call, against the same run in one generate call per step (issue 16, 17)."""
    monkeypatch.setenv("MERR1_PROGRESS_INTERVAL_S", "0")  # a line per step (stderr is not a terminal)
    common = [f"checkpoint_dir={tiny_sft_checkpoint}", "max_steps_per_epoch=2", "batch_size=2",
              "log_samples_every_n_steps=10", *SMALL]  # fmt: skip
    logs = tmp_path / "disk"
    proc = tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path / 'batched'}", "rollout_batch_size=1",
                                     "metric_logger._component_=torchtune.training.metric_logging.DiskLogger",
                                     f"metric_logger.log_dir={logs}", *common])  # fmt: skip
    whole = tune_run(RECIPE, CONFIG, [f"output_dir={tmp_path / 'whole'}", *common])
    batched, single = read_jsonl(tmp_path / "batched" / "metrics.jsonl"), read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    for a, b in zip(batched, single):  # per-row seeds: the batching does not change the rollouts
        for key in ("reward/recall/mean", "reward/format/mean", "response_length/mean"):
            assert a[key] == b[key], key
    (disk_log,) = logs.glob("*.txt")
    steps = [line.split()[1] for line in disk_log.read_text().splitlines() if line.startswith("Step")]
    assert steps == ["1", "2"] and "reward/recall/mean" in disk_log.read_text()
    assert {s["step"] for s in read_jsonl(tmp_path / "batched" / "samples.jsonl")} == {1}  # step 1 always
    progress = [line for line in proc.stderr.splitlines() if line.startswith("grpo:")]
    assert progress and "\r" not in proc.stderr.split("grpo:", 1)[1].split("\n", 1)[0]
    assert any("cali_pos=" in line and "format=" in line for line in progress), progress  # every group reward
    assert whole.returncode == 0


def test_negative_kl_weight_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    from recipes.grpo_mer_r1_distributed import GRPORecipe

    monkeypatch.chdir(REPO_ROOT)
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / CONFIG), {"output_dir": str(tmp_path), "loss": {"beta": -1.0}})
    recipe = GRPORecipe(cfg)
    with pytest.raises(ValueError, match="loss.beta must be a finite number >= 0, got -1.0"):
        recipe.setup(cfg)
    assert not hasattr(recipe, "_model")
    recipe.cleanup()
