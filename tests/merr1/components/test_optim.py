import math

import pytest
import torch
from torch import nn

from merr1.components.optim import (
    build_adamw,
    clip_grad_norm,
    cosine_schedule_with_warmup,
    cosine_with_warmup_factor,
    weight_decay_param_groups,
)

# W = 2 warmup steps, T = 6 training steps, r = 0.1:
#   warmup (s + 1) / (W + 1); cosine r + (1 - r) * (1 + cos(pi * (s - W) / (T - W))) / 2
COS_QUARTER = (1 + math.cos(math.pi / 4)) / 2  # 0.853553...
COS_3_QUARTERS = (1 + math.cos(3 * math.pi / 4)) / 2  # 0.146447...


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1 / 3),
        (1, 2 / 3),
        (2, 1.0),
        (3, 0.1 + 0.9 * COS_QUARTER),  # 0.868198
        (4, 0.55),
        (5, 0.1 + 0.9 * COS_3_QUARTERS),  # 0.231802
        (6, 0.1),
        (7, 0.1),  # past the end: stays at the minimum
        (100, 0.1),
    ],
)
def test_cosine_factor_table(step, expected):
    factor = cosine_with_warmup_factor(step, num_warmup_steps=2, num_training_steps=6, min_lr_ratio=0.1)
    assert factor == pytest.approx(expected)


@pytest.mark.parametrize(
    "warmup, total, ratio, step, expected",
    [
        (0, 4, 0.0, 0, 1.0),  # no warmup: first step at the peak
        (0, 4, 0.0, 2, 0.5),
        (0, 4, 0.0, 4, 0.0),
        (3, 3, 0.2, 2, 0.75),  # warmup only
        (3, 3, 0.2, 3, 0.2),  # T == W: straight to the minimum after warmup
        (0, 0, 0.5, 0, 0.5),  # zero-length schedule
        (1, 5, 1.0, 3, 1.0),  # min ratio 1: constant after warmup
    ],
)
def test_cosine_factor_edges(warmup, total, ratio, step, expected):
    assert cosine_with_warmup_factor(step, warmup, total, ratio) == pytest.approx(expected)


def test_scheduler_drives_optimizer_lr():
    model = nn.Linear(2, 2)
    optimizer = build_adamw(model, lr=0.5)
    scheduler = cosine_schedule_with_warmup(optimizer, num_training_steps=6, num_warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.5 * cosine_with_warmup_factor(s, 2, 6, 0.1) for s in range(7)]
    assert lrs == pytest.approx(expected)
    assert all(g["lr"] == pytest.approx(0.05) for g in optimizer.param_groups)


def test_scheduler_state_dict_round_trip():
    model = nn.Linear(2, 2)
    optimizer = build_adamw(model, lr=1.0)
    scheduler = cosine_schedule_with_warmup(optimizer, num_training_steps=10, num_warmup_steps=3)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer2 = build_adamw(model, lr=1.0)
    scheduler2 = cosine_schedule_with_warmup(optimizer2, num_training_steps=10, num_warmup_steps=3)
    scheduler2.load_state_dict(state)
    optimizer2.step()
    scheduler2.step()
    optimizer.step()
    scheduler.step()
    assert scheduler2.get_last_lr() == pytest.approx(scheduler.get_last_lr())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_training_steps=10, num_warmup_steps=-1), "num_warmup_steps"),
        (dict(num_training_steps=-1), "num_training_steps must be >= 0"),
        (dict(num_training_steps=5, min_lr_ratio=1.5), "min_lr_ratio"),
        (dict(num_training_steps=5, min_lr_ratio=-0.1), "min_lr_ratio"),
    ],
)
def test_scheduler_rejects_bad_arguments(kwargs, message):
    optimizer = build_adamw(nn.Linear(2, 2), lr=1.0)
    with pytest.raises(ValueError, match=message):
        cosine_schedule_with_warmup(optimizer, **kwargs)


def test_warmup_longer_than_the_run_is_clamped_with_a_warning(caplog):
    """A smoke run (max_steps_per_epoch=3) with the default warmup of 20: the 3 steps warm up
    with W = T = 3, factors (s + 1) / (W + 1) = 1/4, 2/4, 3/4."""
    optimizer = build_adamw(nn.Linear(2, 2), lr=1.0)
    with caplog.at_level("WARNING", logger="merr1.components.optim"):
        scheduler = cosine_schedule_with_warmup(optimizer, num_training_steps=3, num_warmup_steps=20)
    assert "num_warmup_steps (20) is longer than the run (3 optimizer steps): clamped to 3" in caplog.text
    lrs = []
    for _ in range(3):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == [0.25, 0.5, 0.75]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)  # 2-D: decayed
        self.proj = nn.Linear(4, 4)  # weight decayed, bias not
        self.norm = nn.LayerNorm(4)  # 1-D: not decayed
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_weight_decay_only_on_matrices():
    block = _Block()
    groups = weight_decay_param_groups(block, weight_decay=0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    not_decayed = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(block.embed.weight), id(block.proj.weight)}
    assert not_decayed == {id(block.proj.bias), id(block.norm.weight), id(block.norm.bias)}


def test_weight_decay_groups_leave_out_empty_group():
    groups = weight_decay_param_groups(nn.Linear(3, 3, bias=False), weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


def test_build_adamw_cpu_uses_foreach_and_decays_only_matrices():
    block = _Block()
    optimizer = build_adamw(block, lr=1e-3, weight_decay=0.5, betas=[0.8, 0.95], eps=1e-6)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    assert optimizer.defaults["betas"] == (0.8, 0.95) and optimizer.defaults["eps"] == 1e-6
    # With zero gradients Adam's update is 0, so only decoupled weight decay moves parameters.
    for p in block.parameters():
        p.grad = torch.zeros_like(p)
    norm_before = block.norm.weight.detach().clone()
    embed_before = block.embed.weight.detach().clone()
    optimizer.step()
    torch.testing.assert_close(block.norm.weight, norm_before)
    torch.testing.assert_close(block.embed.weight, embed_before * (1 - 1e-3 * 0.5))


def test_build_adamw_rejects_frozen_model():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_adamw(model, lr=1e-3)


@pytest.mark.gpu
def test_build_adamw_cuda_is_fused():
    optimizer = build_adamw(nn.Linear(2, 2).cuda(), lr=1e-3)
    assert optimizer.defaults["fused"] is True


def _params_with_grads(grads):
    params = []
    for g in grads:
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    return params


def test_clip_grad_norm_hand_values():
    params = _params_with_grads([torch.tensor([3.0]), torch.tensor([[4.0, 0.0]])])
    norm = clip_grad_norm(params, max_norm=1.0)
    assert isinstance(norm, float) and norm == pytest.approx(5.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6]), atol=1e-5, rtol=0)
    torch.testing.assert_close(params[1].grad, torch.tensor([[0.8, 0.0]]), atol=1e-5, rtol=0)


def test_clip_grad_norm_below_max_and_inf_max_leave_grads():
    params = _params_with_grads([torch.tensor([0.3, 0.4])])
    assert clip_grad_norm(params, max_norm=1.0) == pytest.approx(0.5)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.3, 0.4]))
    params = _params_with_grads([torch.tensor([30.0, 40.0])])
    assert clip_grad_norm(params, max_norm=math.inf) == pytest.approx(50.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([30.0, 40.0]))


def test_clip_grad_norm_ignores_params_without_grad_and_reports_nonfinite():
    with_grad = _params_with_grads([torch.tensor([1.0, float("nan")])])
    without = nn.Parameter(torch.ones(3))
    norm = clip_grad_norm([*with_grad, without], max_norm=1.0)
    assert math.isnan(norm)
    assert clip_grad_norm([without], max_norm=1.0) == 0.0
