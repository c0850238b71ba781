import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_writes_the_set_and_refuses_to_overwrite(tmp_path, capsys):
    script = _load("make_sample_data")
    out = tmp_path / "s"
    args = ["--out", str(out), "--num_train", "30", "--num_sft_samples", "6", "--num_eval", "4"]
    assert script.main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sft"]["num_samples"] == 6 and stats["rl"]["num_samples"] == 24
    assert len(list((out / "mer_caption_plus" / "media_cache").iterdir())) == 30
    first = _digest(out)
    with pytest.raises(SystemExit):
        script.main(args)  # exists, no --force
    assert script.main(args + ["--force"]) == 0
    assert _digest(out) == first  # deterministic
    assert script.main(args + ["--force", "--no_media"]) == 0
    assert not (out / "mer_caption_plus" / "media_cache").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        script.main(["--out", str(foreign), "--force"])
    assert (foreign / "keep.txt").is_file()


def test_runs_as_a_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "scripts/make_sample_data.py", "--out", str(tmp_path / "s"), "--num_train", "20",
           "--num_sft_samples", "4", "--num_eval", "2", "--no_media"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "sample_info.json").is_file()
