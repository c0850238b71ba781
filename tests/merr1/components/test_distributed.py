import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
from dist_helpers import run_on_ranks
from torch import nn

from merr1.components.distributed import (
    all_reduce_dict,
    all_reduce_scalar,
    barrier,
    broadcast_object,
    destroy,
    device_for_rank,
    gather_objects,
    get_world_size_and_rank,
    init_distributed,
    is_rank_zero,
    set_seed,
)
from merr1.components.optim import build_adamw, clip_grad_norm


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def test_single_process_without_torchrun_is_a_world_of_one(no_torchrun_env):
    assert init_distributed() == (1, 0)
    assert not dist.is_initialized()
    assert get_world_size_and_rank() == (1, 0)
    assert is_rank_zero()
    barrier()
    destroy()


def test_init_with_init_method_needs_rank_env(no_torchrun_env, tmp_path):
    with pytest.raises(ValueError, match="RANK"):
        init_distributed(init_method=f"file://{tmp_path}/store")


@pytest.mark.parametrize("op, expected", [("sum", 2.5), ("mean", 2.5), ("max", 2.5), ("min", 2.5)])
def test_reductions_in_a_world_of_one_are_identity(op, expected):
    assert all_reduce_scalar(torch.tensor(2.5), op) == expected
    assert all_reduce_dict({"a": 2.5, "b": True, "c": 3}, op) == {"a": 2.5, "b": 1.0, "c": 3.0}
    assert all_reduce_dict({}, op) == {}


def test_object_collectives_in_a_world_of_one_are_identity(no_torchrun_env):
    assert broadcast_object({"a": 1}) == {"a": 1}
    assert gather_objects(7) == [7]


def test_reduction_rejects_unknown_op():
    with pytest.raises(ValueError, match="op must be one of"):
        all_reduce_dict({"a": 1.0}, "avg")


@pytest.mark.parametrize("cfg", ["cpu", "auto"])
def test_device_for_rank_cpu(cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_for_rank(cfg) == torch.device("cpu")


def test_device_for_rank_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        device_for_rank("cuda")
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'auto'"):
        device_for_rank("gpu")


@pytest.mark.gpu
def test_device_for_rank_cuda_uses_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert device_for_rank("cuda") == torch.device("cuda", 0)
    assert device_for_rank("auto") == torch.device("cuda", 0)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(()).item()


def test_set_seed_is_reproducible_and_offset_by_rank():
    assert set_seed(7, rank=0) == 7
    first = _draws()
    set_seed(7, rank=0)
    assert _draws() == first
    assert set_seed(7, rank=1) == 8
    assert _draws() != first
    set_seed(8, rank=0)  # rank r of seed s draws what rank 0 of seed s + r draws
    second = _draws()
    set_seed(7, rank=1)
    assert _draws() == second
    assert set_seed(7) == 7  # rank defaults to this process's rank (0 without a process group)


def _collectives_on_two_ranks() -> dict:
    """Runs on every rank: reductions, barrier, and FSDP2 grad clipping vs. an unsharded copy."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    world_size, rank = get_world_size_and_rank()
    out = {
        "world_rank": (world_size, rank),
        "is_rank_zero": is_rank_zero(),
        "init_again": init_distributed(),
        "sum": all_reduce_dict({"x": rank + 1.0, "y": torch.tensor(10.0 * rank)}, "sum"),
        "mean": all_reduce_scalar(rank + 1.0, "mean"),
        "max": all_reduce_scalar(float(rank == 1), "max"),
        "min": all_reduce_scalar(rank + 3, "min"),
        "broadcast": broadcast_object({"from": rank}),
        "gathered": gather_objects([rank] * (rank + 1)),
    }
    barrier()

    torch.manual_seed(0)  # identical models on both ranks
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    reference = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    reference.load_state_dict(model.state_dict())
    mesh = init_device_mesh("cpu", (world_size,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))  # [8, 6], the global batch
    # Each rank takes half the batch; FSDP2 averages gradients = the full-batch mean loss gradient.
    model(x[rank::world_size]).pow(2).mean().backward()
    reference(x[0::2]).pow(2).mean().mul(0.5).add(reference(x[1::2]).pow(2).mean().mul(0.5)).backward()
    out["grads_are_dtensors"] = all(isinstance(p.grad, DTensor) for p in model.parameters())
    out["norm"] = clip_grad_norm(model.parameters(), max_norm=0.05)
    out["reference_norm"] = clip_grad_norm(reference.parameters(), max_norm=0.05)
    out["max_grad_diff"] = max(
        (p.grad.full_tensor() - r.grad).abs().max().item() for p, r in zip(model.parameters(), reference.parameters())
    )
    optimizer = build_adamw(model, lr=0.1, weight_decay=0.1)
    optimizer.step()
    out["optimizer_foreach"] = optimizer.defaults["foreach"]
    return out


def test_two_gloo_ranks(tmp_path):
    results = run_on_ranks(_collectives_on_two_ranks, 2, tmp_path)
    for rank, out in enumerate(results):
        assert out["world_rank"] == (2, rank)
        assert out["init_again"] == (2, rank)
        assert out["is_rank_zero"] == (rank == 0)
        assert out["sum"] == {"x": 3.0, "y": 10.0}
        assert out["mean"] == 1.5
        assert out["max"] == 1.0
        assert out["min"] == 3.0
        assert out["broadcast"] == {"from": 0}
        assert out["gathered"] == ([[0], [1, 1]] if rank == 0 else [])
        assert out["grads_are_dtensors"]
        assert isinstance(out["norm"], float)
        assert out["norm"] == pytest.approx(out["reference_norm"], rel=1e-5)
        assert out["norm"] > 0.05  # so clipping really scaled the gradients
        assert out["max_grad_diff"] < 1e-6  # clipped sharded grads == clipped unsharded grads
        assert out["optimizer_foreach"] is True
    assert results[0]["norm"] == results[1]["norm"]


def test_resumable_sampler_starts_part_way_with_the_same_order():
    from merr1.components.distributed import ResumableDistributedSampler

    data = list(range(23))
    for rank in (0, 1):
        full = ResumableDistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7)
        full.set_epoch(3)
        order = list(full)
        assert len(order) == len(full) == 11  # drop_last: 23 // 2
        resumed = ResumableDistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7)
        resumed.set_epoch(3, start_index=4)
        assert list(resumed) == order[4:] and len(resumed) == 7
        resumed.set_epoch(4)
        other = list(resumed)
        assert other != order  # a new epoch reshuffles
        assert len(other) == 11
    with pytest.raises(ValueError, match="start_index"):
        full.set_epoch(0, start_index=12)
