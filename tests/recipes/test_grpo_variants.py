"""The GRPO/SFT configs through the literal `tune run` commands of their headers (issues 5, 6 and 16).

The main MER-R1 configs (7B and 3B) and both SFT configs run 2 steps on the tiny Thinker on CPU
with ONE shared list of overrides (``TINY``): the model, checkpoint, data, prompt, device and
sizes are swapped, while the rewards, calibration, advantage groups, loss and generation settings
run as written. Every paper variant runs 2 steps through its tiny CPU twin in ``debug/variants/``
(``debug/grpo_mer_r1_tiny`` plus the variant's lines), and static tests tie the pieces together:
a 7B variant differs from ``7B_grpo_mer_r1.yaml`` only in the lines that define it, its tiny twin
differs from ``debug/grpo_mer_r1_tiny.yaml`` only in those keys and holds the same advantage
groups, reward components (with their settings, up to the CPU demo's strict format and
duplicate-word penalty), calibration and response format, and the advantage groups are the ones
tested as formulas in ``tests/merr1/components/test_advantages.py``. So the 7B variants' sections
run through the tiny twins, and every other key of theirs runs through the main 7B config.

Speed: each ``tune run`` costs ~12 s of imports here, so the runs are launched up front, two at a
time (``NUM_PARALLEL``), by a module fixture; each test then waits for its own run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from tune_helpers import REPO_ROOT, tune_run

CONFIG_ROOT = REPO_ROOT / "recipes" / "configs"
OMNI = CONFIG_ROOT / "qwen2_5_omni"
MAIN_GRPO = OMNI / "7B_grpo_mer_r1.yaml"
VARIANT_CONFIGS = sorted((OMNI / "variants").glob("*.yaml"))  # a new variant file is tested automatically
GRPO_CONFIGS = VARIANT_CONFIGS + [MAIN_GRPO, OMNI / "3B_grpo_mer_r1_single_device.yaml"]
SFT_CONFIGS = [OMNI / "7B_sft.yaml", OMNI / "3B_sft_single_device.yaml"]
DEBUG_GRPO = CONFIG_ROOT / "debug" / "grpo_mer_r1_tiny.yaml"
DEBUG_VARIANTS = CONFIG_ROOT / "debug" / "variants"
DEBUG_VARIANT_CONFIGS = sorted(DEBUG_VARIANTS.glob("*.yaml"))
SAMPLE_DIR = "data/sample"  # relative to the repo root, shared with the other recipe tests
NUM_PARALLEL = max(1, min(2, os.cpu_count() or 1))
NUM_STEPS = 2

# The header's launch line, e.g.
#   "#   tune run --nproc_per_node 8 grpo_mer_r1_distributed --config qwen2_5_omni/7B_grpo_mer_r1"
LAUNCH = re.compile(r"^#\s+tune run ((?:--\S+ \S+ )*)(\S+) --config (\S+)(.*)$", re.MULTILINE)
# Paper variants and their advantage formulas in tests/merr1/components/test_advantages.py.
FORMULA_OF_VARIANT = {
    "7B_grpo_baseline": "baseline",
    "7B_grpo_rd": "rd",
    "7B_grpo_rd_ad": "rd_ad",
    "7B_grpo_mer_r1": "mer_r1",
    "7B_grpo_a1": "a1_word_level",
    "7B_grpo_a2": "a2_no_cali_neg",
    "7B_grpo_b1": "b1_reward_space_calibration",
    "7B_grpo_b2": "b2_mixed_before_normalization",
    "7B_grpo_videoauto_r1": "videoauto_r1",
    "7B_grpo_emo_r3": "emo_r3",
}
# What a variant may change relative to 7B_grpo_mer_r1.yaml (dotted prefixes of flattened keys).
VARIANT_KEYS = (
    "output_dir", "checkpoint_dir", "dataset.response_format", "generation.stop_strings", "rewards", "calibration",
    "advantage", "metrics_answer_scheme",
)  # fmt: skip


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def flatten(node, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b.c": leaf} (lists are leaves)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def changed_keys_outside(base: dict, other: dict, allowed: list[str] | tuple[str, ...]) -> list[str]:
    """Flattened keys whose value differs between two configs and that no ``allowed`` prefix covers."""
    a, b = flatten(base), flatten(other)
    changed = {k for k in a.keys() | b.keys() if a.get(k, "<missing>") != b.get(k, "<missing>")}
    return sorted(k for k in changed if not any(k == p or k.startswith(p + ".") for p in allowed))


def config_name(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).with_suffix("").as_posix()


def launch_line(path: Path) -> tuple[list[str], str, str, str]:
    """(launcher flags, recipe, config, trailing text) of the header's first `tune run` line."""
    match = LAUNCH.search(path.read_text())
    assert match, f"{path}: no `tune run ... --config ...` line in the header"
    return match.group(1).split(), match.group(2), match.group(3), match.group(4)


def tiny_model_overrides() -> list[str]:
    """The debug config's tiny Thinker in place of the real one (its sizes, its seed)."""
    model = load(DEBUG_GRPO)["model"]
    return [f"model._component_={model.pop('_component_')}", "~model.checkpoint_dir"] + [
        f"model.{key}={value}" for key, value in model.items()
    ]


# One list for every config: tiny model and data, CPU, fp32, 2 steps of 2 prompts.
TINY = [
    *tiny_model_overrides(),
    "checkpoint_dir=null",  # random init; the tokenizer follows (${checkpoint_dir} -> the tiny tokenizer)
    "dataset._component_=merr1.components.data.mer_caption_plus_sample",
    f"dataset.data_dir={SAMPLE_DIR}",
    "dataset.num_sft_samples=null",  # null: the sample's own SFT/RL partition
    "dataset.partition_seed=null",
    "dataset.num_mel_bins=16",  # the tiny Thinker's audio features
    "dataset.system_prompt=null",  # the debug configs' short demo prompt
    "dataset.instruction=List the emotions.",
    "device=cpu",
    "dtype=fp32",
    "num_workers=0",
    "batch_size=2",
    "gradient_accumulation_steps=1",
    "epochs=1",
    f"max_steps_per_epoch={NUM_STEPS}",
    "enable_activation_checkpointing=false",
    "lr_scheduler.num_warmup_steps=0",  # a warmup longer than the 2-step run is an error
    "save_every_n_steps=null",
]
GRPO_ONLY = ["num_generations=2", "generation.max_new_tokens=16"]
# The tiny twins only get smaller: 2 steps of 2 prompts x G=2.
DEBUG_SHORT = [f"max_steps_per_epoch={NUM_STEPS}", "batch_size=2", "gradient_accumulation_steps=1", *GRPO_ONLY]


def run_launch_line(path: Path, out_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """The header's launch command in one CPU process (its --nproc_per_node dropped) + overrides."""
    _, recipe, name, _ = launch_line(path)
    return tune_run(recipe, name, [f"output_dir={out_dir}", *overrides], check=False, timeout=600)


def tiny_twin(path: Path) -> Path:
    """debug/variants/grpo_<variant>_tiny.yaml of qwen2_5_omni/variants/7B_grpo_<variant>.yaml."""
    return DEBUG_VARIANTS / f"grpo_{path.stem.removeprefix('7B_grpo_')}_tiny.yaml"


# Run id -> (config file, overrides). Every shipped config keeps beta = 0, so the beta > 0 path
# (a reference model is built) runs once more on the main config through an override.
BETA_RUN = "qwen2_5_omni/7B_grpo_mer_r1+beta"
MAIN_GRPO_CONFIGS = [MAIN_GRPO, OMNI / "3B_grpo_mer_r1_single_device.yaml"]
RUN_GRPO_CONFIGS = DEBUG_VARIANT_CONFIGS + MAIN_GRPO_CONFIGS
RUNS = {
    **{config_name(p): (p, DEBUG_SHORT) for p in DEBUG_VARIANT_CONFIGS},
    **{config_name(p): (p, TINY + GRPO_ONLY) for p in MAIN_GRPO_CONFIGS},
    **{config_name(p): (p, TINY) for p in SFT_CONFIGS},
    BETA_RUN: (MAIN_GRPO, TINY + GRPO_ONLY + ["loss.beta=0.04"]),
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Start the runs of every test selected in this session, NUM_PARALLEL at a time."""
    from merr1.components.data.sample import ensure_sample_data

    ensure_sample_data(REPO_ROOT / SAMPLE_DIR)  # once, before concurrent runs read it
    selected = [
        item.callspec.params["config"]
        for item in request.session.items
        if item.module is request.module and "config" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    pool = ThreadPoolExecutor(NUM_PARALLEL)
    futures = {}
    for run_id in dict.fromkeys(selected):
        path, overrides = RUNS[run_id]
        out_dir = tmp_path_factory.mktemp(run_id.rsplit("/", 1)[-1].replace("+", "_"))
        futures[run_id] = (out_dir, pool.submit(run_launch_line, path, out_dir, overrides))
    yield futures
    pool.shutdown(cancel_futures=True)


def finished_run(runs, name: str) -> tuple[Path, str, list[dict]]:
    out_dir, future = runs[name]
    proc = future.result()
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    return out_dir, proc.stderr, rows


def reward_outputs(reward_nodes: list[dict]) -> set[str]:
    """The reward names the configured reward components produce (their ``outputs``)."""
    names = set()
    for node in reward_nodes:
        module, cls = node["_component_"].rsplit(".", 1)
        names.update(getattr(importlib.import_module(module), cls).outputs)
    return names


def assert_finite(row: dict, key: str) -> None:
    assert key in row, f"{key} not logged; got {sorted(row)}"
    assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row[key])


# ----------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("config", [config_name(p) for p in RUN_GRPO_CONFIGS])
def test_grpo_config_runs_two_steps_on_the_tiny_model(config, runs):
    cfg = load(CONFIG_ROOT / f"{config}.yaml")
    _, log, rows = finished_run(runs, config)
    rewards = reward_outputs(cfg["rewards"]) | {"recall", "precision"}  # recall/precision are always logged
    groups = [g["name"] for g in cfg["advantage"]["groups"]]
    for row in rows:
        for name in rewards:
            assert_finite(row, f"reward/{name}/mean")
            assert_finite(row, f"reward/{name}/std")
        for group in groups:
            for stat in ("reward_mean", "reward_std", "zero_std_frac"):
                assert_finite(row, f"adv/{group}/{stat}")
        for key in ("adv/zero_std_frac", "loss", "grad_norm", "lr", "response_length/mean"):
            assert_finite(row, key)
        assert 0.0 <= row["reward/recall/mean"] <= 1.0 and 0.0 <= row["reward/precision/mean"] <= 1.0
    assert f"advantage groups {groups}" in log
    if cfg["loss"]["beta"] > 0:
        assert "reference model: built" in log
    else:
        assert "reference model: none (beta = 0)" in log


@pytest.mark.parametrize("config", [BETA_RUN])
def test_grpo_reference_model_is_built_when_beta_is_positive(config, runs):
    _, log, rows = finished_run(runs, config)
    assert "reference model: built (beta = 0.04)" in log
    for row in rows:
        assert_finite(row, "loss/kl")


@pytest.mark.parametrize("config", [config_name(p) for p in SFT_CONFIGS])
def test_sft_config_runs_two_steps_on_the_tiny_model(config, runs):
    out_dir, _, rows = finished_run(runs, config)
    for row in rows:
        for key in ("loss", "lr", "grad_norm", "tokens_per_second", "num_target_tokens"):
            assert_finite(row, key)
    assert (out_dir / "hf" / "config.json").is_file()


# ----------------------------------------------------------------------------------- static


@pytest.mark.parametrize("path", GRPO_CONFIGS + SFT_CONFIGS, ids=config_name)
def test_header_launch_line_names_the_recipe_and_this_config(path):
    flags, recipe, name, _ = launch_line(path)
    assert recipe == ("sft_distributed" if path in SFT_CONFIGS else "grpo_mer_r1_distributed")
    assert name == config_name(path), "the header launches another config (copy-paste?)"
    single = "single_device" in path.stem
    assert (flags == []) if single else (flags == ["--nproc_per_node", "8"]), flags
    text = path.read_text()
    assert "Override example" in text and "/path/to/" in text


@pytest.mark.parametrize("path", VARIANT_CONFIGS, ids=config_name)
def test_variant_differs_from_mer_r1_only_in_its_defining_lines(path):
    outside = changed_keys_outside(load(MAIN_GRPO), load(path), VARIANT_KEYS)
    assert outside == [], f"{path.name} changes more than the variant: {outside}"
    text = path.read_text()
    assert "Diff from 7B_grpo_mer_r1:" in text
    assert re.search(r"Paper's number[^\n]*(\d\d\.\d\d?|gives no number)", text), "header must cite the paper's number"


def _reward_defaults(component: str) -> dict:
    module, cls = component.rsplit(".", 1)
    signature = inspect.signature(getattr(importlib.import_module(module), cls))
    return {name: p.default for name, p in signature.parameters.items() if p.default is not p.empty}


# The CPU demo's deviations from the paper (debug/grpo_mer_r1_tiny's header): on in every tiny twin.
DEMO_REWARD_SETTINGS = {"duplicate_penalty": True, "strict": True}


def test_every_7B_variant_has_a_tiny_twin():
    twins = {tiny_twin(p) for p in VARIANT_CONFIGS}
    assert set(DEBUG_VARIANT_CONFIGS) == twins, sorted(str(p) for p in set(DEBUG_VARIANT_CONFIGS) ^ twins)


@pytest.mark.parametrize("path", VARIANT_CONFIGS, ids=config_name)
def test_tiny_twin_is_the_tiny_config_plus_the_variant_lines(path):
    """debug/variants/grpo_X_tiny = debug/grpo_mer_r1_tiny with the variant's sections of 7B_grpo_X."""
    twin, variant, tiny = load(tiny_twin(path)), load(path), load(DEBUG_GRPO)

    outside = changed_keys_outside(tiny, twin, [k for k in VARIANT_KEYS if k != "checkpoint_dir"])
    assert outside == [], f"{tiny_twin(path).name} changes more than the variant: {outside}"
    assert twin["advantage"]["groups"] == variant["advantage"]["groups"]
    assert twin["dataset"].get("response_format", "mer_r1") == variant["dataset"]["response_format"]
    assert twin["generation"]["stop_strings"] == variant["generation"]["stop_strings"]
    assert twin["metrics_answer_scheme"] == variant["metrics_answer_scheme"]
    assert (twin["calibration"] is None) == (variant["calibration"] is None)
    if variant["calibration"] is not None:
        assert twin["calibration"]["confidence"] == variant["calibration"]["confidence"]
    assert [r["_component_"] for r in twin["rewards"]] == [r["_component_"] for r in variant["rewards"]]
    for mine, theirs in zip(twin["rewards"], variant["rewards"]):
        defaults = _reward_defaults(mine["_component_"])
        for key in mine.keys() | theirs.keys():
            if key == "_component_":
                continue
            if key in DEMO_REWARD_SETTINGS and key in defaults:
                assert mine.get(key) == DEMO_REWARD_SETTINGS[key], (mine["_component_"], key)
                continue
            assert mine.get(key, defaults.get(key)) == theirs.get(key, defaults.get(key)), (mine["_component_"], key)


@pytest.mark.parametrize("path", DEBUG_VARIANT_CONFIGS, ids=config_name)
def test_tiny_twin_header_launches_itself(path):
    flags, recipe, name, _ = launch_line(path)
    assert (flags, recipe, name) == ([], "grpo_mer_r1_distributed", config_name(path))
    text = path.read_text()
    assert "Diff from debug/grpo_mer_r1_tiny:" in text and "Override example" in text
    assert f"qwen2_5_omni/variants/7B_{path.stem.removesuffix('_tiny')}.yaml" in text


def _test_advantages_variants() -> dict[str, str]:
    path = REPO_ROOT / "tests" / "merr1" / "components" / "test_advantages.py"
    spec = importlib.util.spec_from_file_location("_variant_formulas", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANT_YAML


@pytest.mark.parametrize("stem", sorted(FORMULA_OF_VARIANT))
def test_variant_matches_the_tested_formula(stem):
    """Advantage groups, reward components and calibration as in test_advantages.py's snippets."""
    path = MAIN_GRPO if stem == MAIN_GRPO.stem else OMNI / "variants" / f"{stem}.yaml"
    cfg, snippet = load(path), yaml.safe_load(_test_advantages_variants()[FORMULA_OF_VARIANT[stem]])
    assert cfg["advantage"]["groups"] == snippet["advantage"]["groups"]
    assert [r["_component_"] for r in cfg["rewards"]] == [r["_component_"] for r in snippet["rewards"]]
    expected = snippet.get("calibration")
    assert (cfg["calibration"] or {}).get("confidence") == (expected or {}).get("confidence")
    for reward in cfg["rewards"]:  # paper settings: sets, lenient format (the CPU demo's deviations are off)
        assert reward.get("duplicate_penalty", False) is False and reward.get("strict", False) is False


def test_every_paper_variant_has_a_config():
    have = {p.stem for p in VARIANT_CONFIGS} | {MAIN_GRPO.stem}
    assert set(FORMULA_OF_VARIANT) <= have, sorted(set(FORMULA_OF_VARIANT) - have)


def test_paper_hyper_parameters():
    """METHOD section 5: SFT 5k samples, 2 epochs, lr 2e-5; RL G = 4, lr 2e-6, 1 epoch, 8 prompts
    (= 32 completions) per optimizer step, the same SFT/RL partition."""
    sft7, sft3 = load(SFT_CONFIGS[0]), load(SFT_CONFIGS[1])
    for sft in (sft7, sft3):
        assert sft["dataset"]["split"] == "sft" and sft["dataset"]["num_sft_samples"] == 5000
        assert sft["epochs"] == 2 and sft["optimizer"]["lr"] == 2e-5
        assert sft["dtype"] == "bf16" and sft["enable_activation_checkpointing"] is True
    global_batch = [n * c["batch_size"] * c["gradient_accumulation_steps"] for n, c in ((8, sft7), (1, sft3))]
    assert global_batch == [32, 32]
    for path in GRPO_CONFIGS:
        cfg = load(path)
        num_ranks = 1 if "single_device" in path.stem else 8
        assert num_ranks * cfg["batch_size"] * cfg["gradient_accumulation_steps"] == 8, path.name
        assert cfg["num_generations"] == 4 and cfg["optimizer"]["lr"] == 2e-6 and cfg["epochs"] == 1
        assert cfg["dataset"]["split"] == "rl"
        for key in ("num_sft_samples", "partition_seed", "max_seq_len", "num_mel_bins"):
            assert cfg["dataset"][key] == sft7["dataset"][key], (path.name, key)
        assert cfg["generation"]["temperature"] == 1.0


def test_literals_copied_from_the_library_match_it():
    """Strings and numbers written out in the YAML (every knob visible) equal the library's values."""
    from merr1.components.data.prompts import QWEN_OMNI_SYSTEM_PROMPT
    from merr1.rewards.reflective import MODALITY_RECHECK_QUESTION, TEXT_RECHECK_QUESTION

    for path in GRPO_CONFIGS + SFT_CONFIGS:
        cfg = load(path)
        assert cfg["dataset"]["system_prompt"] == QWEN_OMNI_SYSTEM_PROMPT, path.name
        assert cfg["dataset"]["instruction"] is None, path.name  # the response format's full instruction
        for reward in cfg.get("rewards", []):
            if reward["_component_"].endswith("ReflectiveRewards"):
                assert reward["text_question"] == TEXT_RECHECK_QUESTION
                assert reward["modality_question"] == MODALITY_RECHECK_QUESTION
            if reward["_component_"].endswith("VideoAutoAnswerRewards"):
                assert reward["bonus"] == pytest.approx(0.3 / 1.1, abs=1e-12)
