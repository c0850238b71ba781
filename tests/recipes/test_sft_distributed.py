"""recipes/sft_distributed.py through the literal `tune run` commands on the tiny config (issue 5)."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tune_helpers import REPO_ROOT, TUNE, read_jsonl, tune_env, tune_run

CONFIG = "recipes/configs/debug/sft_tiny.yaml"
# Short warmup, no periodic checkpoints unless asked.
FAST = ["lr_scheduler.num_warmup_steps=1", "save_every_n_steps=null", "log_every_n_steps=1"]


def sft_run(args, *, nproc=None, check=True):
    return tune_run("recipes/sft_distributed.py", CONFIG, args, nproc=nproc, check=check)


def read_metrics(out_dir):
    return read_jsonl(Path(out_dir) / "metrics.jsonl")


def test_loss_goes_down_and_logs_every_step(tmp_path):
    out = tmp_path / "sft"
    sft_run([f"output_dir={out}", "epochs=1", "max_steps_per_epoch=30", "batch_size=16", *FAST])
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("loss", "lr", "grad_norm", "tokens_per_second", "peak_memory_gb", "num_target_tokens"):
        assert all(isinstance(r[key], float) for r in rows), key
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    # Final HF weights reload with transformers, and the resolved config sits next to them.
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out / "hf").model_type == "qwen2_5_omni_thinker"
    assert (out / "config.yaml").is_file()
    # save_every_n_steps null: one resumable checkpoint at the end, with its own HF weights.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_30"]
    assert (out / "checkpoints" / "step_30" / "hf" / "config.json").is_file()


def test_two_ranks_and_one_fsdp_rank_match_one_process_with_the_global_batch(tmp_path):
    common = ["epochs=1", "max_steps_per_epoch=4", "shuffle=false", *FAST]
    sft_run([f"output_dir={tmp_path / 'one'}", "batch_size=4", *common])
    sft_run([f"output_dir={tmp_path / 'two'}", "batch_size=2", *common], nproc=2)
    sft_run([f"output_dir={tmp_path / 'fsdp1'}", "batch_size=4", *common], nproc=1)  # FSDP on one rank
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    fsdp1 = read_metrics(tmp_path / "fsdp1")
    assert len(one) == len(two) == len(fsdp1) == 4
    for a, b in zip(one, fsdp1):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for a, b in zip(one, two):
        assert a["num_target_tokens"] == b["num_target_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


def test_ctrl_c_saves_exits_130_and_resume_continues_exactly(tmp_path):
    common = ["epochs=3", "max_steps_per_epoch=4", *FAST]
    sft_run([f"output_dir={tmp_path / 'full'}", *common])
    full = read_metrics(tmp_path / "full")
    assert len(full) == 12

    # Ctrl-C (SIGINT) a second run after a few steps: it saves a resumable checkpoint and exits 130.
    part = tmp_path / "part"
    proc = subprocess.Popen(
        [TUNE, "run", "recipes/sft_distributed.py", "--config", CONFIG, f"output_dir={part}", *common],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=tune_env(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = part / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-4000:]
    assert "preempted (SIGINT)" in output
    stopped = len(read_metrics(part))
    assert 3 <= stopped < 12, stopped

    sft_run([f"output_dir={part}", "resume_from_checkpoint=true", *common])
    resumed = read_metrics(part)
    assert [r["step"] for r in resumed] == list(range(1, 13))  # no lost or duplicated step
    for a, b in zip(full, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7), (a["step"], stopped)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)


def test_bad_config_key_fails_before_training(tmp_path):
    proc = sft_run([f"output_dir={tmp_path}", "lerning_rate=1e-3"], check=False)
    assert proc.returncode != 0
    assert "lerning_rate: unknown key; the config accepts" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_data_file_fails_before_training(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    proc = sft_run(
        [f"output_dir={tmp_path / 'out'}", "dataset._component_=merr1.components.data.mer_caption_plus",
         f"dataset.data_dir={data_dir}"],
        check=False,
    )
    assert proc.returncode != 0
    assert "track2_train_mercaptionplus.csv" in proc.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_float8_path_runs_on_cpu(tmp_path):
    """float8 (emulated on CPU) converts the decoder linears and trains; the loss stays finite."""
    proc = sft_run([f"output_dir={tmp_path}", "epochs=1", "max_steps_per_epoch=3", "float8.enabled=true",
                     "float8.emulate=true", "float8.recipe=rowwise", "float8.enable_fsdp_float8_all_gather=false", *FAST])
    assert "float8 (rowwise): 14 linear layers converted" in proc.stderr
    rows = read_metrics(tmp_path)
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)


def test_frozen_multimodal_encoders_keep_their_weights(tmp_path):
    from safetensors.torch import load_file

    from merr1.components.hf_checkpoint import hf_to_model_key
    from merr1.components.models import tiny_thinker

    sft_run([f"output_dir={tmp_path}", "epochs=1", "max_steps_per_epoch=3", "freeze_multimodal_encoders=true", *FAST])
    initial = tiny_thinker(seed=0, hidden_size=128, intermediate_size=256).state_dict()
    trained = {hf_to_model_key(k, thinker=True): v for k, v in load_file(tmp_path / "hf" / "model.safetensors").items()}
    encoders = [k for k in trained if ".audio_tower." in f".{k}" or ".visual." in f".{k}"]
    assert encoders and set(encoders) <= set(initial)
    for key in encoders:
        assert torch.equal(trained[key], initial[key]), key
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[q_proj], initial[q_proj])  # the LLM trained


def test_sigterm_under_torchrun_exits_143_on_the_launcher(tmp_path):
    """`tune run --nproc_per_node 2`: the launcher forwards SIGTERM, both ranks save and exit 143,
    and merr1's `tune` reports 143 (plain torchrun would exit 1)."""
    out = tmp_path / "two"
    proc = subprocess.Popen(
        [TUNE, "run", "--nproc_per_node", "2", "recipes/sft_distributed.py", "--config", CONFIG, f"output_dir={out}",
         "epochs=3", "max_steps_per_epoch=4", *FAST],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=tune_env(),
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output[-4000:]
    assert "preempted (SIGTERM)" in output
    assert (out / "checkpoints" / "latest").is_file()


def test_resume_refuses_changed_settings_and_never_rewrites_a_finished_run(tmp_path):
    """Issue 15: a changed lr is refused on resume (the config.yaml stays the first run's); named in
    resume_allow_changed it is accepted and recorded; resuming the finished run rewrites nothing."""
    out = tmp_path / "run"
    common = ["epochs=1", "max_steps_per_epoch=2", *FAST]
    sft_run([f"output_dir={out}", *common])
    first_config = (out / "config.yaml").read_text()
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "metrics.jsonl"}

    proc = sft_run([f"output_dir={out}", "resume_from_checkpoint=true", "optimizer.lr=2e-3", *common], check=False)
    assert proc.returncode != 0
    assert "optimizer.lr: 0.001 -> 0.002" in proc.stderr and "resume_allow_changed" in proc.stderr
    assert (out / "config.yaml").read_text() == first_config

    sft_run([f"output_dir={out}", "resume_from_checkpoint=true", "optimizer.lr=2e-3", "resume_allow_changed=[optimizer.lr]",
             *common])  # fmt: skip
    assert (out / "config.yaml").read_text() == first_config
    assert {p: p.stat().st_mtime_ns for p in files} == files  # the finished run's files are untouched
    assert list(out.glob("config.resumed_at_step_2*.yaml"))
    assert len(read_metrics(out)) == 2
