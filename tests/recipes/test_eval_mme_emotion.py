"""recipes/eval_mme_emotion.py through the literal `tune run` commands (issue 14).

1. The debug config as shipped: tiny answer model, tiny local extractor and frame-seeing local
   judge, the generated sample set, CPU, offline.
2. Extractor and judge behind a real local chat-completions server with scripted replies: the
   official layouts on disk, the numbers, a clip without frames dropped, a rerun that sends no
   request, a judge change that re-sends only the judge requests, and 2 ranks giving the same
   answers as 1.
"""

import json
import re
import shutil
import pytest
import yaml
from chat_server import ChatServer
from tune_helpers import REPO_ROOT, read_jsonl, tune_run

from merr1.components.data.frames import count_frames, frames_entry
from merr1.components.data.mme_emotion import ensure_mme_emotion_sample, load_task
from merr1.components.mme_emotion import TASKS
from merr1.score import main as score_main

CONFIG = "debug/eval_mme_emotion_tiny"
SAMPLE_DIR = REPO_ROOT / "data" / "mme_emotion_sample"
JUDGED_KEYS = ["video_id", "ground_truth", "model_response", "step", "score", "input_tokens", "output_tokens"]


def run(args, *, config=CONFIG, nproc=None, check=True):
    recipe = "recipes/eval_mme_emotion.py" if nproc else "eval_mme_emotion"
    return tune_run(recipe, config, args, nproc=nproc, check=check)


def score_cli(capsys, *args):
    assert score_main(["mme", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def test_debug_config_end_to_end_with_local_backends(tmp_path, capsys):
    out = tmp_path / "tiny"
    proc = run([f"output_dir={out}"])
    report = json.loads((out / "report.json").read_text())
    slow = report["modes"]["slow"]
    assert list(slow["tasks"]) == list(TASKS) and list(report["modes"]) == ["slow"]
    assert report["judge"]["backend"] == "local" and report["judge"]["use_frames"] is True
    assert report["judge_name"] == "local merr1.components.models.tiny_thinker"
    assert report["extractor"]["model"]["_component_"] == "merr1.components.models.tiny_qwen2"
    assert "not comparable" in report["comparability"] and report["answers"]["modes"] == ["slow"]
    for task in TASKS:
        answers = read_jsonl(out / "answers" / "slow" / f"{task}.jsonl")
        judged = json.loads((out / "judged" / "slow" / f"{task}.json").read_text())
        steps = json.loads((out / "steps" / "slow" / f"{task}.json").read_text())
        assert len(answers) == len(judged) == len(steps) == 4
        assert [list(r) for r in judged] == [JUDGED_KEYS] * 4
        assert [r["video_id"] for r in judged] == [s.video_id for s in load_task(SAMPLE_DIR, task).samples]
        assert all(isinstance(r["score"], str) and r["input_tokens"] > 0 for r in judged)  # every clip was judged
        assert slow["tasks"][task]["judge_failures"] == {"no_frames": 0, "no_decodable_frame": 0, "request_failed": 0}
    pooled = score_cli(capsys, "--task", "overall", "--judged", out / "judged" / "slow")
    assert {k: pooled[k] for k in ("recognition", "reasoning", "cot", "kept")} == {
        k: slow["overall"][k] for k in ("recognition", "reasoning", "cot", "kept")
    }
    header = r"^mode\s+ER-Lab\s+ER-Wild\s+Noise-ER\s+FG-ER\s+ML-ER\s+SA\s+FG-SA\s+IR\s+Rec\s+Rea\s+CoT"
    assert re.search(header, proc.stdout, re.M)


# ---------------------------------------------------------------------------------------------
# HTTP backends against a scripted server


def responder(body: dict) -> str:
    """Extraction: two steps. Judge: FG-ER gets (K - 1)/K on the last step (K gold labels), the
    single-label tasks 1/1 on the last step when an odd number of frames was sent, else 0/1."""
    content = body["messages"][1]["content"]
    if isinstance(content, str):
        return "<step>Step 1: The voice is calm. Step 2: The predicted emotion is neutral.</step>"
    text, images = content[0]["text"], content[1:]
    if "Emotion label(s):" in text:
        k = len(re.search(r"Emotion label\(s\): '([^']*)'", text).group(1).split(";"))
        return f"<score>Step 1: 1/1, Step 2: {k - 1}/{k}</score>"
    return f"<score>Step 1: 0/1, Step 2: {len(images) % 2}/1</score>"


def http_config(server, path, judge_model="judge-a"):
    """The debug config with both backends on the server, 2 tasks, both modes, 3 clips each."""
    cfg = yaml.safe_load((REPO_ROOT / "recipes" / "configs" / f"{CONFIG}.yaml").read_text())
    backend = {"_component_": "merr1.components.judge.OpenAIChatBackend", "base_url": server.base_url,
               "api_key_env": None, "max_concurrency": 3, "timeout_s": 30, "max_attempts": 2,
               "retry_delay_s": 0.0}  # fmt: skip
    cfg["extractor"] = {**backend, "model": "extractor-a"}
    cfg["judge"] = {**backend, "model": judge_model}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def http_args(out, data_dir):
    return [f"output_dir={out}", f"data.data_dir={data_dir}", "tasks=[ER-Lab,FG-ER]", "modes=[slow,fast]",
            "max_samples=3", "batch_size=1", "sampling.max_new_tokens=8"]  # fmt: skip


@pytest.fixture(scope="module")
def data_copy(tmp_path_factory):
    """The sample set with the frames of ER-Lab's second clip removed (a clip without frames)."""
    ensure_mme_emotion_sample(SAMPLE_DIR)
    root = tmp_path_factory.mktemp("mme_data") / "set"
    shutil.copytree(SAMPLE_DIR, root, symlinks=True)
    shutil.rmtree(frames_entry(root / "frames_cache", load_task(root, "ER-Lab").samples[1].video_id))
    return root


@pytest.fixture(scope="module")
def http_run(data_copy, tmp_path_factory):
    """(server, output dir, config, requests of the first run): one run with both backends on the server."""
    root = tmp_path_factory.mktemp("mme_http")
    with ChatServer(responder=responder) as server:
        config = http_config(server, root / "a.yaml")
        run(http_args(root / "out", data_copy), config=config)
        yield server, root / "out", config, list(server.requests)


def test_http_backends_requests_numbers_and_layouts(http_run, data_copy, capsys):
    server, out, _, requests = http_run
    report = json.loads((out / "report.json").read_text())
    # What was sent: at most 2 tasks x 2 modes x 3 clips extractions (identical requests are
    # sent once), judge requests only for clips with frames, the official parameters.
    extraction = [r["body"] for r in requests if isinstance(r["body"]["messages"][1]["content"], str)]
    judge = [r["body"] for r in requests if not isinstance(r["body"]["messages"][1]["content"], str)]
    assert 0 < len(extraction) <= 12 and 0 < len(judge) <= 2 * (2 + 3)
    assert all(b["model"] == "extractor-a" and b["temperature"] == 0.0 and "n" not in b for b in extraction)
    assert all(b["model"] == "judge-a" and b["n"] == 1 and b["temperature"] == 0.0 for b in judge)
    parts = [p for b in judge for p in b["messages"][1]["content"][1:]]
    assert parts and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts)
    assert report["judge"]["model"] == "judge-a" and report["judge_name"] == "openai judge-a"
    # The numbers, from the scripted replies.
    for mode in ("slow", "fast"):
        lab = report["modes"][mode]["tasks"]["ER-Lab"]
        clips = load_task(data_copy, "ER-Lab").samples[:3]
        frames = [count_frames(data_copy / "frames_cache", s.video_id) for s in clips]
        assert frames[1] is None
        assert lab["judge_failures"] == {"no_frames": 1, "no_decodable_frame": 0, "request_failed": 0}
        odd = [f % 2 for f in frames if f is not None]
        assert (lab["kept"], lab["dropped"]) == (2, 1)
        assert lab["recognition"] == 100 * ((0 + odd[0] + odd[1]) / 2) and lab["reasoning"] == 0.0
        fg = report["modes"][mode]["tasks"]["FG-ER"]
        total = 0.0
        for sample in load_task(data_copy, "FG-ER").samples[:3]:
            k = len(sample.label.split(";"))
            total += (k - 1) / k
        assert fg["recognition"] == 100 * (total / 3) and fg["reasoning"] == 100.0 and fg["kept"] == 3
        assert report["modes"][mode]["overall"]["kept"] == 5
        judged = json.loads((out / "judged" / mode / "ER-Lab.json").read_text())
        assert [list(r) for r in judged] == [JUDGED_KEYS] * 3
        assert judged[1]["score"] is None and judged[1]["step"].startswith("<step>Step 1")
        answers = read_jsonl(out / "answers" / mode / "ER-Lab.jsonl")
        assert all(a["model_response"].startswith("<think></think><answer>") == (mode == "fast") for a in answers)
        rescored = score_cli(capsys, "--task", "FG-ER", "--judged", out / "judged" / mode / "FG-ER.json")
        assert rescored["recognition"] == fg["recognition"]


def test_http_rerun_pays_nothing_and_keeps_the_answers(http_run, data_copy):
    server, out, config, requests = http_run
    before = {p: p.read_text() for p in (out / "answers").rglob("*.jsonl")}
    run(http_args(out, data_copy), config=config)
    assert len(server.requests) == len(requests)
    assert {p: p.read_text() for p in (out / "answers").rglob("*.jsonl")} == before


@pytest.mark.slow
def test_http_judge_change_settings_refusal_and_two_ranks(http_run, data_copy, tmp_path):
    server, out, config, _ = http_run
    # Another judge model: only the judge requests are sent again (the extractions are cached).
    sent = len(server.requests)
    run(http_args(out, data_copy), config=http_config(server, tmp_path / "b.yaml", judge_model="judge-b"))
    new = [r["body"] for r in server.requests[sent:]]
    assert new and all(b["model"] == "judge-b" and not isinstance(b["messages"][1]["content"], str) for b in new)
    # A missing API key fails before any answer is generated.
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["judge"]["api_key_env"] = "MERR1_TEST_UNSET_KEY"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run(http_args(tmp_path / "never", data_copy), config=bad, check=False)
    assert proc.returncode != 0 and "MERR1_TEST_UNSET_KEY" in proc.stderr
    assert not (tmp_path / "never" / "answers").exists()
    # Answers made with other settings are refused.
    proc = run(http_args(out, data_copy) + ["sampling.max_new_tokens=9"], config=config, check=False)
    assert proc.returncode != 0 and "answers made with other settings" in proc.stderr + proc.stdout
    # Two ranks answer the same (batch size 1); rank 0 alone extracts and judges.
    out2 = tmp_path / "two"
    run(http_args(out2, data_copy), config=config, nproc=2)
    for mode in ("slow", "fast"):
        for task in ("ER-Lab", "FG-ER"):
            one = {r["name"]: r for r in read_jsonl(out / "answers" / mode / f"{task}.jsonl")}
            two = {r["name"]: r for r in read_jsonl(out2 / "answers" / mode / f"{task}.jsonl")}
            assert one == two
    assert json.loads((out2 / "report.json").read_text())["runtime"]["num_ranks"] == 2
