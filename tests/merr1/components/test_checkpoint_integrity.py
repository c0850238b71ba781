"""Checkpoint commit, integrity, disk space (issue 15, item 1).

Faults are injected where they happen in real life: a process SIGKILLed at each step of a commit,
bytes truncated or overwritten on disk, a disk that is really full (a 20 MB tmpfs, when this
process may mount one).
"""

import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import toy_training_loop as toy
import torch
from dist_helpers import run_on_ranks
from torch import nn

from merr1.components import checkpointing
from merr1.components.checkpointing import (
    CorruptCheckpointError,
    DataPosition,
    TrainingCheckpointer,
    file_crc32,
    verify_checkpoint,
)
from merr1.components.optim import build_adamw


def _state(seed: int = 0, width: int = 32):
    """A model + AdamW with one step taken (so the optimizer has moments to save)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4))
    optimizer = build_adamw(model, lr=1e-2)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_into_fresh(output_dir: Path, width: int = 32, **kwargs):
    model, optimizer = _state(seed=99, width=width)
    restored = TrainingCheckpointer(output_dir, **kwargs).load_latest(model, optimizer, None)
    return restored, _weights(model)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- manifest
def test_manifest_lists_every_file_with_size_and_crc32(tmp_path):
    model, optimizer = _state()

    def extra_file(step_dir: Path) -> None:
        (step_dir / "hf").mkdir()
        (step_dir / "hf" / "weights.bin").write_bytes(b"\x00\x01" * 1000)

    path = TrainingCheckpointer(tmp_path, config={"seed": 1}).save(
        model, optimizer, None, DataPosition(0, 1, 1), write_extra_files=extra_file
    )
    manifest = json.loads((path / "manifest.json").read_text())
    on_disk = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    assert {"meta.json", "config.yaml", "state/.metadata", "state/__0_0.distcp", "state/trainer.pt",
            "state/rng_rank0.pt", "hf/weights.bin"} == set(on_disk)  # fmt: skip
    assert manifest["files"]["hf/weights.bin"] == {"size": 2000, "crc32": file_crc32(path / "hf" / "weights.bin")[1]}
    for rel, entry in manifest["files"].items():
        assert entry["size"] == (path / rel).stat().st_size
    assert verify_checkpoint(path) == []


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", "00000000"),
        (b"123456789", "cbf43926"),  # the CRC-32 check value (ISO-HDLC)
        (b"a" * (16 * 2**20 + 3), None),  # crosses the 16 MiB read chunk
    ],
)
def test_file_crc32(tmp_path, data, expected):
    import zlib

    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_crc32(path) == (len(data), expected or f"{zlib.crc32(data):08x}")


# --------------------------------------------------------------------------- damaged checkpoints
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwrite_middle(path: Path) -> None:
    """Flip 8 bytes in the middle of the file (same size: only a checksum can tell)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        chunk = f.read(8)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


DAMAGES = [
    ("state/__0_0.distcp", _truncate, "state/__0_0.distcp: .* bytes, the manifest says"),
    ("state/__0_0.distcp", _overwrite_middle, "state/__0_0.distcp: checksum .* \\(the content changed\\)"),
    ("state/.metadata", _truncate, "state/.metadata: .* bytes, the manifest says"),
    ("state/trainer.pt", _truncate, "state/trainer.pt: .* bytes"),
    ("state/rng_rank0.pt", _overwrite_middle, "state/rng_rank0.pt: checksum"),
    ("meta.json", _truncate, "meta.json: .* bytes"),
    ("config.yaml", _overwrite_middle, "config.yaml: checksum"),
    ("state/trainer.pt", Path.unlink, "state/trainer.pt: missing"),
    ("manifest.json", _truncate, "manifest.json: unreadable"),
    ("manifest.json", Path.unlink, "manifest.json: missing"),
]


@pytest.mark.parametrize("damaged_file, damage, problem", DAMAGES, ids=[f"{f}-{d.__name__}" for f, d, _ in DAMAGES])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damaged_file, damage, problem):
    model, optimizer = _state()
    checkpointer = TrainingCheckpointer(tmp_path, config={"lr": 0.1})
    checkpointer.save(model, optimizer, None, DataPosition(0, 1, 1))
    weights_1 = _weights(model)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    newest = checkpointer.save(model, optimizer, None, DataPosition(0, 2, 2))
    damage(newest / damaged_file)

    with caplog.at_level(logging.WARNING, logger="merr1.components.checkpointing"):
        restored, weights = _load_into_fresh(tmp_path, config={"lr": 0.1})
    assert restored.position.global_step == 1 and restored.path.name == "step_1"
    _assert_same(weights, weights_1)
    assert any(
        "step_2 is damaged" in r.getMessage() and re.search(problem, r.getMessage()) for r in caplog.records
    ), [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damaged_file, damage, problem", DAMAGES[:3], ids=["truncated", "overwritten", "metadata"])
def test_no_intact_checkpoint_is_an_error_naming_the_file(tmp_path, damaged_file, damage, problem):
    model, optimizer = _state()
    path = TrainingCheckpointer(tmp_path, keep_last_n=1).save(model, optimizer, None, DataPosition(0, 5, 5))
    damage(path / damaged_file)
    with pytest.raises(CorruptCheckpointError, match=f"no intact checkpoint .*step_5: {problem}"):
        _load_into_fresh(tmp_path)
    assert verify_checkpoint(path)[0].startswith(damaged_file)


def test_damaged_hf_export_is_reported_but_does_not_block_the_resume(tmp_path, caplog):
    model, optimizer = _state()

    def extra_file(step_dir: Path) -> None:
        (step_dir / "hf").mkdir()
        (step_dir / "hf" / "model.safetensors").write_bytes(b"x" * 100)

    path = TrainingCheckpointer(tmp_path).save(model, optimizer, None, DataPosition(0, 1, 1), write_extra_files=extra_file)
    _truncate(path / "hf" / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="merr1.components.checkpointing"):
        restored, _ = _load_into_fresh(tmp_path)
    assert restored.path == path
    assert "hf/model.safetensors: 50 bytes, the manifest says 100" in caplog.text
    assert verify_checkpoint(path) == ["hf/model.safetensors: 50 bytes, the manifest says 100 (truncated or overwritten)"]


def test_two_ranks_fall_back_together_when_one_ranks_shard_is_damaged(tmp_path):
    run_dir = tmp_path / "run"
    common = dict(output_dir=run_dir, num_steps=6, fsdp=True)
    assert run_on_ranks(toy.run, 2, tmp_path, save_every=2, stop_after=4, **common) == ["stopped"] * 2
    manifest = json.loads((run_dir / "checkpoints" / "step_4" / "manifest.json").read_text())
    assert {"state/__0_0.distcp", "state/__1_0.distcp", "state/rng_rank0.pt", "state/rng_rank1.pt"} <= set(manifest["files"])
    _overwrite_middle(run_dir / "checkpoints" / "step_4" / "state" / "__1_0.distcp")
    # Both ranks verify, agree that step_4 is damaged and resume from step_2: the run then ends
    # exactly like an uninterrupted one (steps 3-4 are trained again).
    assert run_on_ranks(toy.run, 2, tmp_path, resume=True, save_every=2, **common) == ["done"] * 2
    assert run_on_ranks(toy.run, 2, tmp_path, output_dir=tmp_path / "ref", num_steps=6, fsdp=True) == ["done"] * 2
    assert toy.read_metrics(run_dir) == toy.read_metrics(tmp_path / "ref")
    assert TrainingCheckpointer(run_dir).latest_name() == "step_6"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_2", "step_4.v2", "step_6"]


# --------------------------------------------------------------------------- commit: no unsafe moment
def _kill_at(point: str):
    """Patch the commit so that this process SIGKILLs itself at ``point``."""
    real_replace, real_write, real_rmtree = os.replace, checkpointing.atomic_write_text, shutil.rmtree

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        is_commit = Path(src).name.startswith(".tmp_step_")
        if is_commit and point == "before_rename":
            die()
        real_replace(src, dst)
        if is_commit and point == "after_rename":
            die()

    def write(path, text):
        real_write(path, text)
        if Path(path).name == "latest" and point == "after_pointer":
            die()

    def rmtree(path, *args, **kwargs):
        if point == "during_delete" and Path(path).parent.name == "checkpoints" and not Path(path).name.startswith("."):
            next(p for p in Path(path).rglob("*") if p.is_file()).unlink()  # half deleted
            die()
        real_rmtree(path, *args, **kwargs)

    checkpointing.os.replace = replace
    checkpointing.atomic_write_text = write
    checkpointing.shutil.rmtree = rmtree


def _resave_and_die(output_dir: Path, point: str) -> None:
    model, optimizer = _state(seed=1)  # a different state than the one on disk
    _kill_at(point)
    TrainingCheckpointer(output_dir, keep_last_n=1).save(model, optimizer, None, DataPosition(0, 2, 2))
    os._exit(0)  # not reached at any kill point


@pytest.mark.parametrize("point", ["before_rename", "after_rename", "after_pointer", "during_delete"])
def test_sigkill_at_every_point_of_a_resave_with_keep_last_1_keeps_an_intact_latest(tmp_path, point):
    """Re-saving step 2 (a resumed finished run, or a new run in the same output_dir) with
    keep_last_n=1: wherever the process dies, ``latest`` names an intact checkpoint of step 2,
    holding the old state before the pointer moved and the new one after."""
    model, optimizer = _state(seed=0)
    TrainingCheckpointer(tmp_path, keep_last_n=1).save(model, optimizer, None, DataPosition(0, 2, 2))
    old = _weights(model)
    new = _weights(_state(seed=1)[0])
    proc = multiprocessing.get_context("fork").Process(target=_resave_and_die, args=(tmp_path, point))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL

    checkpointer = TrainingCheckpointer(tmp_path, keep_last_n=1)
    latest = tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert latest.is_dir() and verify_checkpoint(latest) == [], latest
    restored, weights = _load_into_fresh(tmp_path)
    assert restored.position.global_step == 2
    _assert_same(weights, new if point in ("after_pointer", "during_delete") else old)
    # The next save cleans up whatever the crash left and keeps exactly one checkpoint.
    model, optimizer = _state(seed=2)
    checkpointer.save(model, optimizer, None, DataPosition(0, 3, 3))
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["latest", "step_3"]


def test_resave_of_the_loaded_step_is_skipped_and_rewrites_nothing(tmp_path):
    """Resuming a finished run: the final save of the same step keeps the files on disk as they are."""
    model, optimizer = _state()
    config = {"seed": 0, "optimizer": {"lr": 0.1}}
    path = TrainingCheckpointer(tmp_path, config=config).save(model, optimizer, None, DataPosition(0, 3, 3))
    stamps = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    checkpointer = TrainingCheckpointer(tmp_path, config=config)
    checkpointer.load_latest(*_state(seed=5), None)
    assert checkpointer.save(model, optimizer, None, DataPosition(0, 3, 3)) == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == stamps
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()] == ["step_3"]


# --------------------------------------------------------------------------- disk space
def test_free_space_check_names_folder_bytes_needed_and_free(tmp_path, monkeypatch):
    model, optimizer = _state(width=256)
    checkpointer = TrainingCheckpointer(tmp_path, keep_last_n=2)
    first = checkpointer.save(model, optimizer, None, DataPosition(0, 1, 1))
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file() and p.name != "manifest.json")
    monkeypatch.setattr(checkpointing, "_free_bytes", lambda path: 1000)
    with pytest.raises(OSError) as info:
        checkpointer.save(model, optimizer, None, DataPosition(0, 2, 2))
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert f"in {tmp_path / 'checkpoints'}: it needs about {size} bytes" in message
    assert "1000 bytes (0.00 GB) are free" in message and "keep_last_n=2" in message
    assert checkpointer.latest_name() == "step_1"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_1"]


def test_first_save_needs_at_least_the_model_and_optimizer_bytes(tmp_path, monkeypatch):
    model, optimizer = _state(width=256)
    # fp32 weights, two AdamW moments and a 4-byte step counter per parameter tensor.
    state_bytes = sum(p.numel() * 4 * 3 + 4 for p in model.parameters())
    monkeypatch.setattr(checkpointing, "_free_bytes", lambda path: state_bytes - 1)
    with pytest.raises(OSError, match=f"needs about {state_bytes} bytes"):
        TrainingCheckpointer(tmp_path).save(model, optimizer, None, DataPosition(0, 1, 1))
    monkeypatch.setattr(checkpointing, "_free_bytes", lambda path: state_bytes)
    TrainingCheckpointer(tmp_path).save(model, optimizer, None, DataPosition(0, 1, 1))


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # with 0 bytes free
    ],
)
def test_disk_full_during_the_write_says_so(tmp_path, monkeypatch, error):
    model, optimizer = _state()
    checkpointer = TrainingCheckpointer(tmp_path)
    checkpointer.save(model, optimizer, None, DataPosition(0, 1, 1))

    def fail(step_dir: Path) -> None:
        if isinstance(error, RuntimeError):  # torch's zip writer: no errno, the disk is full
            monkeypatch.setattr(checkpointing, "_free_bytes", lambda path: 0)
        raise error

    with pytest.raises(OSError, match=r"disk full while writing checkpoint step_2 into .*'latest' still names step_1") as info:
        checkpointer.save(model, optimizer, None, DataPosition(0, 2, 2), write_extra_files=fail)
    assert info.value.errno == errno.ENOSPC and info.value.__cause__ is error
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_1"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 20 MB filesystem (needs the right to mount: root in a container)."""
    mount_point = tmp_path / f"tmpfs_{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_real_disk_full_on_a_20mb_tmpfs(small_tmpfs, monkeypatch):
    """A 12 MB checkpoint fits once; the second one is refused before writing (free-space check);
    with the check fooled, the write itself fills the disk and the error says so. Every time
    ``latest`` stays on the intact step_1 and the partial files are removed."""
    model, optimizer = _state(width=100_000)  # 1.3M parameters: ~16 MB with AdamW moments
    checkpointer = TrainingCheckpointer(small_tmpfs, keep_last_n=1)
    checkpointer.save(model, optimizer, None, DataPosition(0, 1, 1))
    weights_1 = _weights(model)
    with pytest.raises(OSError, match=r"not enough free space to save checkpoint step_2 in .*: it needs about \d+ bytes"):
        checkpointer.save(model, optimizer, None, DataPosition(0, 2, 2))

    monkeypatch.setattr(checkpointing, "_tensor_bytes", lambda state: 0)
    monkeypatch.setattr(checkpointing.TrainingCheckpointer, "_latest_size", lambda self: 0)
    with pytest.raises(OSError, match="disk full while writing checkpoint step_2") as info:
        checkpointer.save(model, optimizer, None, DataPosition(0, 2, 2))
    assert info.value.errno == errno.ENOSPC
    assert "unexpected pos" in repr(info.value.__cause__) or "No space" in repr(info.value.__cause__)
    assert sorted(p.name for p in (small_tmpfs / "checkpoints").iterdir()) == ["latest", "step_1"]
    assert shutil.disk_usage(small_tmpfs).free > 3 * 2**20  # the partial save was removed
    restored, weights = _load_into_fresh(small_tmpfs, width=100_000)
    assert restored.position.global_step == 1
    _assert_same(weights, weights_1)


def _save_with_a_failing_rank(output_dir: Path, failing_rank: int) -> str:
    """2 ranks save; the extra-files hook raises on one rank only."""
    import torch.distributed as dist

    model, optimizer = _state()
    checkpointer = TrainingCheckpointer(output_dir)
    checkpointer.save(model, optimizer, None, DataPosition(0, 1, 1))

    def hook(step_dir: Path) -> None:
        if dist.get_rank() == failing_rank:
            raise OSError("device lost")

    try:
        checkpointer.save(model, optimizer, None, DataPosition(0, 2, 2), write_extra_files=hook)
    except Exception as err:  # every rank must get here instead of waiting in a collective
        return f"{type(err).__name__}: {err}"
    return "saved"


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_failure_on_one_rank_raises_on_every_rank(tmp_path, failing_rank):
    results = run_on_ranks(_save_with_a_failing_rank, 2, tmp_path, timeout_s=60, output_dir=tmp_path / "run",
                           failing_rank=failing_rank)  # fmt: skip
    assert results[failing_rank] == "OSError: device lost"
    assert results[1 - failing_rank] == "RuntimeError: another rank failed while saving the checkpoint (its log has the error)"
    assert TrainingCheckpointer(tmp_path / "run").latest_name() == "step_1"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step_1"]
