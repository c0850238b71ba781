"""scripts/convert_mme_emotion_prompts.py renders f-strings exactly; with a checkout of the
official repository (MME_EMOTION_REPO=/path/to/MME-Emotion) it reproduces the committed prompts
and the official metric scripts agree with merr1's arithmetic bit for bit."""

import importlib.util
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from merr1.components import mme_emotion as M

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "convert_mme_emotion_prompts.py"
OFFICIAL = Path(os.environ["MME_EMOTION_REPO"]) if os.environ.get("MME_EMOTION_REPO") else None
needs_official = pytest.mark.skipif(
    OFFICIAL is None or not (OFFICIAL / "eval_cot").is_dir(),
    reason="set MME_EMOTION_REPO to a checkout of FunAudioLLM/MME-Emotion for the cross-checks",
)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def convert():
    return load(SCRIPT, "convert_mme_emotion_prompts")


EXTRACT_SRC = '''
def process_entry(model, client, entry):
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": f"first part, "
                                    f"answer: '{entry['model_response']}'\\n"
                                    f"Example 1:"},
    ]
    entry['step'] = f"Error: {str(e)}"
'''
JUDGE_SRC = '''
def analyze_video(self, entry):
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": [{"type": "text", "text": f"""\\
            Line one: \\
            continued. 

            - Audio clue: '{entry['audio_clue']}'
            - Label: '{entry['ground_truth']}'
            - Prediction: '{entry['step']}'"""}]},
    ]
'''


def fake_repo(root: Path) -> Path:
    for task in M.TASKS:
        for rel, src in (
            (f"extract_step/{task}/code/extract_step.py", EXTRACT_SRC),
            (f"eval_cot/{task}/code/eval_cot_gpt4o.py", JUDGE_SRC),
        ):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(src)
    (root / "LICENSE.txt").write_text("MIT License\n\nCopyright (c) 2025 Fan Zhang\n")
    return root


def test_renders_fstrings_as_python_does(convert, tmp_path):
    prompts = convert.convert(fake_repo(tmp_path / "repo"), tmp_path / "out", commit="abc")
    assert prompts["system"] == "SYS"
    assert prompts["extract_step"]["IR"] == "first part, answer: '{model_response}'\nExample 1:"
    assert prompts["judge"]["SA"] == (
        " " * 12 + "Line one: " + " " * 12 + "continued. \n\n" + " " * 12 + "- Audio clue: '{audio_clue}'\n"
        + " " * 12 + "- Label: '{ground_truth}'\n" + " " * 12 + "- Prediction: '{step}'"
    )  # fmt: skip
    written = json.loads((tmp_path / "out" / "prompts.json").read_text())
    assert written == prompts
    provenance = (tmp_path / "out" / "PROVENANCE.md").read_text()
    assert "commit `abc`" in provenance
    assert "| `judge` / SA | `eval_cot/SA/code/eval_cot_gpt4o.py` | L5-11 (system message L4)" in provenance
    assert (tmp_path / "out" / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{entry['model_response']!r}", "conversion or format spec"),
        ("{entry['model_response']:>5}", "conversion or format spec"),
        ("{{literal}} {entry['model_response']}", "literal braces"),
    ],
)
def test_refuses_what_it_cannot_render_faithfully(convert, tmp_path, bad, message):
    repo = fake_repo(tmp_path / "repo")
    source = 'def f(entry):\n    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": f"'
    (repo / "extract_step/ER-Lab/code/extract_step.py").write_text(source + bad + '"}]\n')
    with pytest.raises(ValueError, match=message):
        convert.convert(repo, tmp_path / "out")


@needs_official
def test_reproduces_the_committed_prompts(convert, tmp_path):
    convert.convert(OFFICIAL, tmp_path, commit="0c265d840dedac7f76c28822652e48575ab262ee")
    assert (tmp_path / "prompts.json").read_bytes() == (M.ASSET_DIR / "prompts.json").read_bytes()
    committed = (M.ASSET_DIR / "PROVENANCE.md").read_text()
    assert (tmp_path / "PROVENANCE.md").read_text() == committed


@needs_official
def test_official_metric_scripts_agree_bit_for_bit(tmp_path):
    import argparse

    official = {t: load(OFFICIAL / "eval_cot" / t / "metrics" / "cal_metrics.py", f"cm_{t}") for t in M.TASKS}
    overall = load(OFFICIAL / "eval_cot" / "Overall" / "metrics" / "cal_metrics.py", "cm_overall")
    rng = random.Random(0)
    pieces = [": 1/1", ": 0/1", ":1/1", ": 2/3", ": 1/10", ":  3/4", ": 7/3", ": 0/0", ": 12/5", ", S: 1/1"]

    def score():
        u = rng.random()
        if u < 0.05:
            return None
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        return f"<score>{body}</score>" if u < 0.9 else body

    def values(text_path):
        lines = dict(line.split(": ", 1) for line in text_path.read_text().splitlines() if ": " in line)
        return [lines[k] for k in ("Total Count", "Recognition Score", "Reasoning Score", "CoT Score")]

    for trial in range(40):
        by_task = {t: [{"video_id": f"v{i}", "ground_truth": rng.choice(["anger", "angry", "joy"]), "score": score()}
                       for i in range(rng.randint(0, 20))] for t in M.TASKS}  # fmt: skip
        for task, records in by_task.items():
            path, out = tmp_path / "in.json", tmp_path / "out.txt"
            path.write_text(json.dumps(records))
            stats = official[task].process_data(str(path))
            official[task].save_results(argparse.Namespace(output_txt=str(out), model_name="m", alpha=0.5), stats)
            mine = M.score_task(records, task)
            count = stats["total"]["count"]
            assert mine["recognition"] == 100 * (stats["total"]["acc"] / count if count else 0)
            assert values(out) == [str(mine["kept"])] + [f"{mine[k]:.1f}" for k in ("recognition", "reasoning", "cot")]
        out = tmp_path / "overall.txt"
        stats = overall.process_data([r for t in M.OVERALL_ORDER for r in by_task[t]])
        overall.save_results(argparse.Namespace(output_txt=str(out), model_name="m", alpha=0.5), stats)
        mine = M.score_overall(by_task)
        assert values(out) == [str(mine["kept"])] + [f"{mine[k]:.1f}" for k in ("recognition", "reasoning", "cot")]
    shutil.rmtree(tmp_path, ignore_errors=True)
