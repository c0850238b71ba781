import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import toy_training_loop as toy
import torch
import yaml
from dist_helpers import run_on_ranks
from torch import nn

from merr1.components import checkpointing
from merr1.components.checkpointing import DataPosition, PreemptionHandler, TrainingCheckpointer
from merr1.components.optim import build_adamw, cosine_schedule_with_warmup
from merr1.launch import launcher_exit_code

REPO_ROOT = Path(__file__).resolve().parents[3]


def _copy_of_metrics(output_dir) -> list[dict]:
    return toy.read_metrics(output_dir)


# --------------------------------------------------------------------------- resume exactness
def test_resume_matches_uninterrupted_run(tmp_path):
    assert toy.run(tmp_path / "ref", 30) == "done"
    assert toy.run(tmp_path / "run", 30, stop_after=14) == "stopped"  # mid-epoch 1 (12 steps/epoch)
    assert toy.run(tmp_path / "run", 30, resume=True) == "done"
    reference = toy.read_metrics(tmp_path / "ref")
    assert [m["step"] for m in reference] == list(range(1, 31))
    # Every logged number (loss, lr, grad norm) of every step is bit-identical.
    assert toy.read_metrics(tmp_path / "run") == reference


def test_resume_without_rng_restore_differs(tmp_path, monkeypatch):
    """Control: the toy loop is sensitive to the RNG state, so the test above is meaningful."""
    toy.run(tmp_path / "ref", 12)
    toy.run(tmp_path / "run", 12, stop_after=5)
    monkeypatch.setattr(checkpointing, "restore_rng_state", lambda state, generators=None: None)
    toy.run(tmp_path / "run", 12, resume=True)
    reference, resumed = toy.read_metrics(tmp_path / "ref"), toy.read_metrics(tmp_path / "run")
    assert resumed[:5] == reference[:5]
    assert [m["loss"] for m in resumed[5:]] != [m["loss"] for m in reference[5:]]


def test_dataloader_iter_draws_from_its_generator_or_the_global_rng():
    """The fact behind the DataLoader advice in checkpointing's docstring."""
    from torch.utils.data import DataLoader

    data = list(range(8))
    state = torch.get_rng_state()
    iter(DataLoader(data, batch_size=2))
    assert not torch.equal(torch.get_rng_state(), state)  # global stream advanced
    state = torch.get_rng_state()
    generator = torch.Generator().manual_seed(0)
    generator_state = generator.get_state()
    iter(DataLoader(data, batch_size=2, generator=generator))
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(generator.get_state(), generator_state)


def _dump_full_model(model: nn.Module, tmp_step_dir: Path) -> None:
    """write_extra_files hook standing in for the HF export: all ranks gather, rank 0 writes."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save(full, tmp_step_dir / "full_model.pt")


def test_two_rank_fsdp2_resume_and_sigterm_on_one_rank(tmp_path):
    run_dir = tmp_path / "run"
    common = dict(output_dir=run_dir, num_steps=10, fsdp=True)
    assert run_on_ranks(toy.run, 2, tmp_path, save_every=4, on_save=_dump_full_model, **common) == ["done"] * 2
    reference = toy.read_metrics(run_dir)
    assert len(reference) == 10
    # Resume from step 4 on 2 ranks; rank 1 alone gets SIGTERM after step 6: both ranks stop there.
    results = run_on_ranks(toy.run, 2, tmp_path, resume=True, resume_step=4, signal_rank_at_step=(1, 6), **common)
    assert results == ["preempted"] * 2
    assert TrainingCheckpointer(run_dir).latest_step() == 6
    assert toy.read_metrics(run_dir) == reference[:6]
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "step_6" / "state").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "rng_rank0.pt", "rng_rank1.pt", "trainer.pt"]
    # Resume from the SIGTERM checkpoint to the end: every step equals the uninterrupted run.
    assert run_on_ranks(toy.run, 2, tmp_path, resume=True, save_every=4, **common) == ["done"] * 2
    assert toy.read_metrics(run_dir) == reference
    # step_8 of the first launch was superseded by the resumed run's, committed under a new name
    # (no temp dirs left behind).
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_4", "step_6", "step_8.v2"]
    assert TrainingCheckpointer(run_dir).step_dir(8).name == "step_8.v2"
    assert not (run_dir / "checkpoints" / "step_8.v2" / "full_model.pt").exists()


def _fresh_toy_state(num_steps: int = 10):
    model = toy.build_model()
    optimizer = build_adamw(model, lr=1e-2, weight_decay=0.1)
    scheduler = cosine_schedule_with_warmup(
        optimizer, num_training_steps=num_steps, num_warmup_steps=2, min_lr_ratio=0.1
    )
    return model, optimizer, scheduler


def test_world_size_change_refused_or_resharded(tmp_path):
    run_dir = tmp_path / "run"
    run_on_ranks(
        toy.run, 2, tmp_path, output_dir=run_dir, num_steps=10, fsdp=True, stop_after=4, on_save=_dump_full_model
    )
    model, optimizer, scheduler = _fresh_toy_state()
    fingerprint = {"batch_size": toy.BATCH_SIZE, "num_steps": 10}
    with pytest.raises(ValueError, match="written by 2 ranks, this run has 1"):
        TrainingCheckpointer(run_dir, fingerprint=fingerprint).load_latest(model, optimizer, scheduler)

    generator = torch.Generator().manual_seed(5)
    state_before = generator.get_state()
    restored = TrainingCheckpointer(run_dir, fingerprint=fingerprint, allow_world_size_change=True).load_latest(
        model, optimizer, scheduler, generators={"noise": generator}
    )
    assert restored.position == DataPosition(epoch=0, step_in_epoch=4, global_step=4)
    assert restored.extra == {"note": "step 4"}
    full = torch.load(run_dir / "checkpoints" / "step_4" / "full_model.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, full[name], rtol=0, atol=0)
    assert all(state["step"].item() == 4 for state in optimizer.state.values())
    assert len(optimizer.state) == len(list(model.parameters()))
    assert scheduler.last_epoch == 4
    assert torch.equal(generator.get_state(), state_before)  # per-rank RNG streams not restored
    # The unsharded model keeps training from the resharded state.
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()


# --------------------------------------------------------------------------- atomicity
def _train_one_step(model, optimizer):
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_exception_during_save_leaves_previous_checkpoint(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    checkpointer = TrainingCheckpointer(tmp_path)
    _train_one_step(model, optimizer)
    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 2, 2))
    saved = _params(model)
    _train_one_step(model, optimizer)

    def crash(tmp_step_dir: Path) -> None:
        assert (tmp_step_dir / "state" / ".metadata").exists()  # model + optimizer fully written
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpointer.save(model, optimizer, scheduler, DataPosition(0, 4, 4), write_extra_files=crash)
    assert checkpointer.latest_step() == 2
    assert not checkpointer.step_dir(4).exists()
    assert not (tmp_path / "checkpoints" / ".tmp_step_4").exists()  # the partial save is removed

    fresh_model, fresh_optimizer, fresh_scheduler = _fresh_toy_state()
    restored = TrainingCheckpointer(tmp_path).load_latest(fresh_model, fresh_optimizer, fresh_scheduler)
    assert restored.position.global_step == 2
    for name, tensor in fresh_model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)

    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 4, 4))
    assert checkpointer.latest_step() == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_2", "step_4"]


def _train_and_get_killed_during_save(output_dir: Path) -> None:
    def kill_at_step_6(model: nn.Module, tmp_step_dir: Path) -> None:
        if tmp_step_dir.name == ".tmp_step_6":
            os.kill(os.getpid(), signal.SIGKILL)

    toy.run(output_dir, 10, save_every=3, on_save=kill_at_step_6)


def test_sigkill_during_save_then_resume(tmp_path):
    toy.run(tmp_path / "ref", 10)
    run_dir = tmp_path / "run"
    proc = multiprocessing.get_context("fork").Process(target=_train_and_get_killed_during_save, args=(run_dir,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    checkpointer = TrainingCheckpointer(run_dir)
    assert checkpointer.latest_step() == 3
    assert (run_dir / "checkpoints" / ".tmp_step_6" / "state" / "trainer.pt").exists()  # died mid-save
    assert [m["step"] for m in toy.read_metrics(run_dir)] == list(range(1, 7))
    assert toy.run(run_dir, 10, save_every=3, resume=True) == "done"
    assert toy.read_metrics(run_dir) == toy.read_metrics(tmp_path / "ref")


def test_crash_between_rename_and_pointer_update(tmp_path, monkeypatch):
    """The step dir is complete but ``latest`` still names the previous one: resume uses the previous."""
    model, optimizer, scheduler = _fresh_toy_state()
    checkpointer = TrainingCheckpointer(tmp_path)
    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 1, 1))
    monkeypatch.setattr(checkpointing, "atomic_write_text", _raise_for_latest(checkpointing.atomic_write_text))
    with pytest.raises(OSError, match="power cut"):
        checkpointer.save(model, optimizer, scheduler, DataPosition(0, 2, 2))
    monkeypatch.undo()
    assert checkpointer.step_dir(2).exists() and checkpointer.latest_step() == 1
    assert TrainingCheckpointer(tmp_path).load_latest(*_fresh_toy_state()).position.global_step == 1
    # Training redoes step 2 and saves it again under a new name; the stale step_2 goes after the commit.
    TrainingCheckpointer(tmp_path).save(model, optimizer, scheduler, DataPosition(0, 2, 2))
    assert checkpointer.latest_step() == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_1", "step_2.v2"]


def _raise_for_latest(write):
    def write_or_raise(path: Path, text: str) -> None:
        if path.name == "latest":
            raise OSError("power cut")
        write(path, text)

    return write_or_raise


def test_saving_same_step_twice_in_one_process_is_skipped(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    checkpointer = TrainingCheckpointer(tmp_path)
    first = checkpointer.save(model, optimizer, scheduler, DataPosition(0, 3, 3))
    mtime = (first / "meta.json").stat().st_mtime_ns
    _train_one_step(model, optimizer)
    assert checkpointer.save(model, optimizer, scheduler, DataPosition(0, 3, 3)) == first
    assert (first / "meta.json").stat().st_mtime_ns == mtime


def test_new_run_overwrites_same_step_of_an_old_run(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    TrainingCheckpointer(tmp_path).save(model, optimizer, scheduler, DataPosition(0, 2, 2))
    _train_one_step(model, optimizer)
    new_params = _params(model)
    TrainingCheckpointer(tmp_path).save(model, optimizer, scheduler, DataPosition(0, 2, 2))
    fresh = _fresh_toy_state()
    TrainingCheckpointer(tmp_path).load_latest(*fresh)
    for name, tensor in fresh[0].state_dict().items():
        torch.testing.assert_close(tensor, new_params[name], rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_2.v2"]


# --------------------------------------------------------------------------- pruning
@pytest.mark.parametrize(
    "keep_last_n, expected", [(None, [1, 2, 3, 4, 5]), (1, [5]), (2, [4, 5]), (10, [1, 2, 3, 4, 5])]
)
def test_keep_last_n(tmp_path, keep_last_n, expected):
    model, optimizer, scheduler = _fresh_toy_state()
    checkpointer = TrainingCheckpointer(tmp_path, keep_last_n=keep_last_n)
    for step in range(1, 6):
        checkpointer.save(model, optimizer, scheduler, DataPosition(0, step, step))
        assert checkpointer.step_dir(step).exists()  # never prunes the one just written
    assert sorted(checkpointer._complete_steps()) == expected
    assert checkpointer.latest_step() == 5


def test_pruning_leaves_higher_steps_of_an_earlier_run(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    TrainingCheckpointer(tmp_path).save(model, optimizer, scheduler, DataPosition(0, 50, 50))
    checkpointer = TrainingCheckpointer(tmp_path, keep_last_n=1)
    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 1, 1))
    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 2, 2))
    assert sorted(checkpointer._complete_steps()) == [2, 50]
    assert checkpointer.latest_step() == 2


def test_keep_last_n_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_last_n must be >= 1"):
        TrainingCheckpointer(tmp_path, keep_last_n=0)


# --------------------------------------------------------------------------- clear errors
def test_resume_without_checkpoint(tmp_path):
    checkpointer = TrainingCheckpointer(tmp_path)
    assert checkpointer.latest_step() is None
    with pytest.raises(FileNotFoundError, match="resume requested but there is no checkpoint"):
        checkpointer.load_latest(*_fresh_toy_state())


@pytest.mark.parametrize(
    "saved, current, message",
    [
        ({"batch_size": 4}, {"batch_size": 8}, "batch_size: checkpoint 4 vs this run 8"),
        ({"batch_size": 4}, {"batch_size": 4, "seq_len": 512}, "seq_len: checkpoint '<unset>' vs this run 512"),
        ({"model": "7B", "lr": 1e-5}, {"model": "3B", "lr": 1e-5}, "model: checkpoint '7B' vs this run '3B'"),
        ({"shape": (2, 3)}, {"shape": [2, 4]}, r"shape: checkpoint \[2, 3\] vs this run \[2, 4\]"),
    ],
)
def test_fingerprint_mismatch_is_refused(tmp_path, saved, current, message):
    model, optimizer, scheduler = _fresh_toy_state()
    TrainingCheckpointer(tmp_path, fingerprint=saved).save(model, optimizer, scheduler, DataPosition(0, 1, 1))
    with pytest.raises(ValueError, match=message):
        TrainingCheckpointer(tmp_path, fingerprint=current).load_latest(model, optimizer, scheduler)


def test_fingerprint_tuple_equals_list(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    checkpointer = TrainingCheckpointer(tmp_path, fingerprint={"shape": (2, 3)})
    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 1, 1))
    TrainingCheckpointer(tmp_path, fingerprint={"shape": [2, 3]}).load_latest(model, optimizer, scheduler)


def test_corrupt_or_dangling_pointer(tmp_path):
    checkpointer = TrainingCheckpointer(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("garbage")
    with pytest.raises(ValueError, match="latest is corrupt"):
        checkpointer.latest_step()
    (tmp_path / "checkpoints" / "latest").write_text("step_7\n")
    with pytest.raises(checkpointing.CorruptCheckpointError, match="no intact checkpoint .* step_7: directory missing"):
        checkpointer.load_latest(*_fresh_toy_state())


def test_model_mismatch_is_a_clear_error(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    TrainingCheckpointer(tmp_path).save(model, optimizer, scheduler, DataPosition(0, 1, 1))
    other = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4))
    other_optimizer = build_adamw(other, lr=1e-2)
    with pytest.raises(ValueError, match=r"cannot load the model/optimizer state .*Size mismatch .* model.0.weight"):
        TrainingCheckpointer(tmp_path).load_latest(other, other_optimizer, None)
    renamed = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"Missing key in checkpoint state_dict: model.4.weight"):
        TrainingCheckpointer(tmp_path).load_latest(renamed, build_adamw(renamed, lr=1e-2), None)


def test_generators_must_match_the_saved_ones(tmp_path):
    model, optimizer, scheduler = _fresh_toy_state()
    generator = torch.Generator().manual_seed(3)
    checkpointer = TrainingCheckpointer(tmp_path)
    checkpointer.save(model, optimizer, scheduler, DataPosition(0, 1, 1), generators={"rollout": generator})
    with pytest.raises(ValueError, match=r"generators to restore \[\] differ from the checkpoint's \['rollout'\]"):
        TrainingCheckpointer(tmp_path).load_latest(model, optimizer, scheduler)


def test_tied_weights_and_extra_round_trip(tmp_path):
    class TiedLM(nn.Module):  # lm_head shares the embedding matrix, like tie_word_embeddings
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed.weight

    model = TiedLM()
    optimizer = build_adamw(model, lr=0.1)
    model.lm_head(model.embed(torch.tensor([1, 2]))).sum().backward()
    optimizer.step()
    extra = {"best_reward": 0.75, "history": [1, 2], "tensor": torch.arange(3)}
    config = {"model": {"_component_": "TiedLM"}, "lr": 0.1}
    TrainingCheckpointer(tmp_path, config=config).save(model, optimizer, None, DataPosition(1, 0, 9), extra=extra)
    assert yaml.safe_load((tmp_path / "checkpoints" / "step_9" / "config.yaml").read_text()) == config
    fresh = TiedLM()
    fresh_optimizer = build_adamw(fresh, lr=0.1)
    restored = TrainingCheckpointer(tmp_path).load_latest(fresh, fresh_optimizer, None)
    assert fresh.lm_head.weight is fresh.embed.weight
    torch.testing.assert_close(fresh.embed.weight, model.embed.weight, rtol=0, atol=0)
    assert restored.position == DataPosition(1, 0, 9)
    assert restored.extra["best_reward"] == 0.75 and restored.extra["history"] == [1, 2]
    assert torch.equal(restored.extra["tensor"], torch.arange(3))
    assert restored.path == tmp_path / "checkpoints" / "step_9"


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(11)
    state = checkpointing.capture_rng_state({"g": generator})
    import random

    import numpy as np

    expected = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=generator))
    checkpointing.restore_rng_state(state, {"g": generator})
    actual = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=generator))
    assert actual[:2] == expected[:2]
    assert torch.equal(actual[2], expected[2]) and torch.equal(actual[3], expected[3])


# --------------------------------------------------------------------------- SIGTERM / SIGINT
def test_preemption_handler_flag_and_restore():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler(("SIGTERM", signal.SIGUSR1)) as handler:
        assert signal.getsignal(signal.SIGTERM) == handler._on_signal
        assert not handler.should_stop() and handler.exit_code == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.received == signal.SIGUSR1
        assert handler.should_stop() and handler.should_stop()  # stays set
        assert handler.exit_code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == previous
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_exit_code_constants():
    assert (checkpointing.EXIT_CODE_SIGTERM, checkpointing.EXIT_CODE_SIGINT) == (143, 130)
    assert checkpointing.preemption_exit_code(signal.SIGTERM) == 143


def test_first_sigint_saves_like_sigterm_a_second_one_interrupts():
    with PreemptionHandler() as handler:
        assert signal.getsignal(signal.SIGINT) == handler._on_signal
        os.kill(os.getpid(), signal.SIGINT)
        assert handler.received == signal.SIGINT
        assert handler.should_stop() and handler.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: Python's default, at once
            os.kill(os.getpid(), signal.SIGINT)
        assert handler.exit_code == 130
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_sigint_during_a_save_interrupts_and_sigterm_is_only_recorded():
    with PreemptionHandler() as handler:
        with checkpointing._saving():
            os.kill(os.getpid(), signal.SIGTERM)
            assert handler.received == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert handler.should_stop() and handler.exit_code == 143
    with PreemptionHandler() as handler:  # SIGTERM first, then Ctrl-C: stop now
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with PreemptionHandler() as handler:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not handler.should_stop()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_preemption_handler_rejects_unknown_signal():
    with pytest.raises(KeyError):
        PreemptionHandler(("SIGNOPE",))


def _run_toy_main(output_dir: Path, num_steps: int) -> None:
    """Forked child: what ``python toy_training_loop.py OUT NUM --sleep 0.05`` does."""
    import logging

    logging.basicConfig(level=logging.INFO, force=True)
    with PreemptionHandler() as handler:
        reason = toy.run(output_dir, num_steps, sleep_per_step=0.05, preemption=handler)
    (output_dir / "exit_reason.txt").write_text(reason)
    sys.exit(handler.exit_code)


def _start_fork(run_dir: Path, num_steps: int):
    proc = multiprocessing.get_context("fork").Process(target=_run_toy_main, args=(run_dir, num_steps))
    proc.start()
    return proc


def _start_python(run_dir: Path, num_steps: int):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, str(Path(toy.__file__)), str(run_dir), str(num_steps), "--sleep", "0.05"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_steps(metrics: Path, num_steps: int, alive: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= num_steps):
        assert alive() and time.monotonic() < deadline, "training process did not start"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "launcher, sig, expected_code",
    [
        ("fork", signal.SIGTERM, 143),  # a forked training process (cheap: torch already imported)
        ("fork", signal.SIGINT, 130),
        ("python", signal.SIGTERM, 143),  # a fresh `python toy_training_loop.py` process (~5 s)
        pytest.param("python", signal.SIGINT, 130, marks=pytest.mark.slow),
    ],
)
def test_signal_saves_exits_128_plus_signal_and_resumes_exactly(tmp_path, launcher, sig, expected_code):
    num_steps = 150
    run_dir = tmp_path / "run"
    proc = _start_fork(run_dir, num_steps) if launcher == "fork" else _start_python(run_dir, num_steps)
    try:
        _wait_for_steps(run_dir / "metrics.jsonl", 3, proc.is_alive if launcher == "fork" else lambda: proc.poll() is None)
        os.kill(proc.pid, sig)
        if launcher == "fork":
            proc.join(60)
            exit_code, reason = proc.exitcode, (run_dir / "exit_reason.txt").read_text()
        else:
            output, _ = proc.communicate(timeout=60)
            exit_code, reason = proc.returncode, output
            assert f"received {sig.name}" in output, output
    finally:
        if launcher == "fork" and proc.is_alive() or launcher == "python" and proc.poll() is None:
            proc.kill()
    assert exit_code == expected_code, reason
    assert "preempted" in reason
    stopped_at = TrainingCheckpointer(run_dir).latest_step()
    assert 3 <= stopped_at < num_steps
    assert [m["step"] for m in toy.read_metrics(run_dir)] == list(range(1, stopped_at + 1))
    meta = json.loads((run_dir / "checkpoints" / f"step_{stopped_at}" / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["position"]["global_step"] == stopped_at
    assert toy.run(run_dir, num_steps, resume=True) == "done"
    toy.run(tmp_path / "ref", num_steps)
    assert toy.read_metrics(run_dir) == toy.read_metrics(tmp_path / "ref")


def _torchrun_toy(launcher: str, nproc: int, run_dir: Path, num_steps: int, *args: str) -> list[str]:
    module = {"torchrun": "torch.distributed.run", "merr1.launch": "merr1.launch"}[launcher]
    return [sys.executable, "-m", module, "--standalone", "--nproc_per_node", str(nproc),
            str(Path(toy.__file__)), str(run_dir), str(num_steps), "--fsdp", *args]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, nproc, sig, expected_code",
    [
        ("merr1.launch", 2, signal.SIGTERM, 143),
        ("merr1.launch", 1, signal.SIGINT, 130),
        ("torchrun", 2, signal.SIGTERM, 1),  # torchrun's own code for any signal: the README says so
    ],
)
def test_torchrun_signal_to_the_agent_then_resume(tmp_path, launcher, nproc, sig, expected_code):
    """The real launch path: the agent forwards the signal to its workers, they save and exit
    128 + signal; merr1.launch (and `tune run --nproc_per_node`) exits with that code."""
    num_steps = 60
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        _torchrun_toy(launcher, nproc, run_dir, num_steps, "--sleep", "0.1"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_for_steps(run_dir / "metrics.jsonl", 3, lambda: proc.poll() is None, timeout_s=120)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == expected_code, output[-3000:]
    assert output.count(f"exit reason: preempted exit code: {128 + sig}") == nproc, output[-3000:]
    stopped_at = TrainingCheckpointer(run_dir).latest_step()
    assert 3 <= stopped_at < num_steps
    resumed = subprocess.run(
        _torchrun_toy(launcher, nproc, run_dir, num_steps, "--resume"), env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    if nproc == 2:
        run_on_ranks(toy.run, 2, tmp_path, output_dir=tmp_path / "ref", num_steps=num_steps, fsdp=True)
    else:
        toy.run(tmp_path / "ref", num_steps)
    assert toy.read_metrics(run_dir) == toy.read_metrics(tmp_path / "ref")


@pytest.mark.parametrize(
    "codes, expected",
    [
        ([143, 143], 143),
        ([130], 130),
        ([-signal.SIGTERM, 143], 143),  # one worker killed by SIGTERM before its handler existed
        ([143, 1], None),  # a crash next to a preemption: not resumable as such
        ([1], None),
        ([-signal.SIGKILL], None),
    ],
)
def test_launcher_exit_code_of_failed_workers(codes, expected):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {
        rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="/nonexistent")
        for rank, code in enumerate(codes)
    }
    assert launcher_exit_code(ChildFailedError("toy", failures)) == expected


def test_launcher_exit_code_of_a_signalled_agent():
    from torch.distributed.elastic.multiprocessing import SignalException

    assert launcher_exit_code(SignalException("got SIGTERM", signal.SIGTERM)) == 143
    assert launcher_exit_code(SignalException("got SIGINT", signal.SIGINT)) == 130
    assert launcher_exit_code(SignalException("got SIGHUP", signal.SIGHUP)) is None
    assert launcher_exit_code(RuntimeError("boom")) is None


def test_parameter_without_gradient_resumes_exactly(tmp_path):
    """A parameter that never gets a gradient (the Thinker's unused audio_bos_eos_token) has no
    AdamW state; resuming must neither fail nor give it one, and training continues identically."""

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.used = nn.Linear(4, 4)
            self.unused = nn.Embedding(2, 4)

        def forward(self, x):
            return self.used(x).square().mean()

    def train(model, optimizer, steps):
        losses = []
        for i in range(steps):
            loss = model(torch.full((3, 4), 0.1 * (i + 1)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses

    model = WithUnused()
    optimizer = build_adamw(model, lr=0.1)
    train(model, optimizer, 2)
    TrainingCheckpointer(tmp_path).save(model, optimizer, None, DataPosition(0, 2, 2))
    expected = train(model, optimizer, 3)

    fresh = WithUnused()
    fresh_optimizer = build_adamw(fresh, lr=0.1)
    TrainingCheckpointer(tmp_path).load_latest(fresh, fresh_optimizer, None)
    assert fresh.unused.weight not in fresh_optimizer.state
    assert train(fresh, fresh_optimizer, 3) == expected
