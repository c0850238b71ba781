"""merr1.components.training: the pieces every recipe shares (issue 11)."""

import math
import signal

import pytest
import torch
from torch import nn

from merr1.components import training
from merr1.components.checkpointing import DataPosition
from merr1.components.models import multimodal_encoders, tiny_thinker


def _spec(**kwargs) -> training.ModelSpec:
    return training.ModelSpec(builder=lambda dtype, device: tiny_thinker(seed=3, dtype=dtype, device=device), **kwargs)


def test_build_model_roles_load_the_builders_weights():
    reference = tiny_thinker(seed=3)
    trained = training.build_model(_spec(), role="train", device=torch.device("cpu"), sharded=False)
    frozen = training.build_model(_spec(), role="reference", device=torch.device("cpu"), sharded=False)
    evaluated = training.build_model(_spec(dtype=torch.bfloat16), role="eval", device=torch.device("cpu"), sharded=False)
    for name, weight in reference.state_dict().items():
        assert torch.equal(trained.state_dict()[name], weight), name
        assert torch.equal(frozen.state_dict()[name], weight), name
        assert torch.equal(evaluated.state_dict()[name], weight.to(torch.bfloat16)), name
    assert trained.training and all(p.requires_grad for p in trained.parameters())
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert not evaluated.training and next(evaluated.parameters()).dtype == torch.bfloat16
    assert next(trained.parameters()).dtype == torch.float32  # float32 master weights, whatever the compute dtype


def test_frozen_encoders_and_training_only_transforms():
    spec = _spec(freeze_multimodal_encoders=True, activation_checkpointing=True,
                 float8=training.Float8Settings(emulate=True))  # fmt: skip
    model = training.build_model(spec, role="train", device=torch.device("cpu"), sharded=False)
    assert not any(p.requires_grad for encoder in multimodal_encoders(model) for p in encoder.parameters())
    assert any(p.requires_grad for p in model.lm_head.parameters())
    names = {type(m).__name__ for m in model.modules()}
    assert "Float8Linear" in names and "CheckpointWrapper" in names
    reference = training.build_model(spec, role="reference", device=torch.device("cpu"), sharded=False)
    names = {type(m).__name__ for m in reference.modules()}
    assert "Float8Linear" not in names and "CheckpointWrapper" not in names  # a plain frozen copy


def test_build_model_rejects_an_unknown_role():
    with pytest.raises(ValueError, match="role"):
        training.build_model(_spec(), role="serve", device=torch.device("cpu"), sharded=False)


def test_model_spec_from_config_reads_the_documented_keys():
    cfg = {"checkpoint_dir": None, "dtype": "bf16", "enable_activation_checkpointing": True, "compile": False,
           "fsdp_reshard_after_forward": False, "fsdp_cpu_offload": False, "freeze_multimodal_encoders": True,
           "float8": {"enabled": True, "recipe": "rowwise", "enable_fsdp_float8_all_gather": False, "emulate": True}}  # fmt: skip
    spec = training.ModelSpec.from_config(cfg, builder=tiny_thinker)
    assert spec.dtype == torch.bfloat16 and spec.activation_checkpointing and not spec.reshard_after_forward
    assert spec.float8 == training.Float8Settings("rowwise", False, True) and not spec.float8_all_gather
    cfg["float8"]["enabled"] = False
    assert training.ModelSpec.from_config(cfg, builder=tiny_thinker).float8 is None
    assert set(cfg) | {"model", "device"} == set(training.MODEL_CONFIG)  # the spec documents exactly these keys


def _toy_optimizer_step(max_grad_norm=1.0):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, training.OptimizerStep(model, optimizer, scheduler, max_grad_norm)


def test_optimizer_step_clips_steps_zeroes_and_advances_the_schedule():
    model, step = _toy_optimizer_step(max_grad_norm=1.0)
    before = model.weight.detach().clone()
    model.weight.grad = torch.full_like(model.weight, 3.0)  # norm 3 * sqrt(6) = 7.35 -> scaled to 1
    model.bias.grad = torch.zeros_like(model.bias)
    out = step(1)
    assert out["grad_norm"] == pytest.approx(3.0 * math.sqrt(6), rel=1e-6)
    assert out["lr"] == 0.5  # the lr the update used (factor 1 at step 0)
    assert torch.allclose(before - model.weight, torch.full_like(before, 0.5 * 3.0 / (3.0 * math.sqrt(6))), rtol=1e-5)
    assert model.weight.grad is None  # zero_grad(set_to_none=True)
    model.weight.grad = torch.zeros_like(model.weight)
    assert step(2)["lr"] == 0.25  # the schedule advanced once per step


def test_optimizer_step_refuses_a_non_finite_gradient_without_updating():
    model, step = _toy_optimizer_step()
    before = model.weight.detach().clone()
    model.weight.grad = torch.full_like(model.weight, float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite gradient norm nan at step 7"):
        step(7)
    assert torch.equal(model.weight, before)


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _loader(n=23, **kwargs):
    defaults = dict(collate_fn=list, batch_size=2, batches_per_step=3, epochs=2, max_steps_per_epoch=None,
                    shuffle=True, seed=5, num_workers=0)  # fmt: skip
    return training.StepLoader(_Items(n), **{**defaults, **kwargs})


def test_step_loader_positions_and_a_resume_mid_epoch_sees_the_same_batches():
    loader = _loader()
    assert loader.steps_per_epoch == 23 // 2 // 3 and loader.total_steps == 2 * 3
    full = list(loader.steps(DataPosition()))
    assert [p for p, _ in full] == [DataPosition(e, s, e * 3 + s) for e in range(2) for s in range(1, 4)]
    assert all(len(batches) == 3 and all(len(b) == 2 for b in batches) for _, batches in full)
    for k in range(len(full)):
        resumed = list(_loader().steps(full[k][0]))
        assert resumed == full[k + 1 :], k
    capped = _loader(max_steps_per_epoch=1)
    assert capped.total_steps == 2 and [p.global_step for p, _ in capped.steps(DataPosition())] == [1, 2]


def test_step_loader_refuses_a_data_set_too_small_for_one_step():
    with pytest.raises(ValueError, match="no optimizer step fits in an epoch: 5 samples for 1 ranks x 3 batches x 2"):
        _loader(n=5)


def test_init_process_refuses_cpu_offload_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="fsdp_cpu_offload"):
        training.init_process("cpu", 0, fsdp_cpu_offload=True)
    process = training.init_process("cpu", 0)
    assert (process.world_size, process.rank, process.sharded, process.is_rank_zero) == (1, 0, False, True)


def test_laps_measure_consecutive_phases(monkeypatch):
    clock = iter([10.0, 10.5, 12.0])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    lap = training.Laps()
    lap("generate")
    lap("train")
    assert lap.seconds == {"generate": 0.5, "train": 1.5}


def test_a_failing_run_releases_its_logs_and_signal_handlers(tmp_path, monkeypatch):
    """recipe_main's cleanup runs when training raises: metrics file closed, SIGTERM handler restored."""
    import sys

    from tune_helpers import REPO_ROOT

    from recipes import sft_distributed

    monkeypatch.chdir(REPO_ROOT)
    before = signal.getsignal(signal.SIGTERM)
    opened = []
    real_run = training.TrainingRun

    def recording_run(*args, **kwargs):
        opened.append(real_run(*args, **kwargs))
        return opened[-1]

    def boom(self, micro_batches):
        raise RuntimeError("injected failure in a step")

    monkeypatch.setattr(training, "TrainingRun", recording_run)
    monkeypatch.setattr(sft_distributed.SFTRecipe, "_train_step", boom)
    monkeypatch.setattr(sys, "argv", ["sft", "--config", "recipes/configs/debug/sft_tiny.yaml",
                                      f"output_dir={tmp_path}", "max_steps_per_epoch=1", "epochs=1",
                                      "lr_scheduler.num_warmup_steps=0"])  # fmt: skip
    with pytest.raises(RuntimeError, match="injected failure"):
        sft_distributed.recipe_main()
    assert len(opened) == 1
    assert opened[0].metric_logger._file is None  # closed
    assert signal.getsignal(signal.SIGTERM) == before
