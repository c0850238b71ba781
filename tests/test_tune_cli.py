"""The README's literal `tune` commands, run as subprocesses from the repo root (issue 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tune_cli_ext

REPO_ROOT = Path(__file__).resolve().parents[1]
TUNE = str(Path(sys.executable).parent / "tune")

# Every recipe needs a fast CPU config and overrides that make one run take seconds. A recipe
# added to recipes/ without an entry here fails `test_every_recipe_has_a_cli_test`.
QUICK_RUNS = {
    "sft_distributed": ("debug/sft_tiny", ["max_steps_per_epoch=2", "epochs=1", "save_every_n_steps=null"]),
    "grpo_mer_r1_distributed": ("debug/grpo_mer_r1_tiny", ["num_steps=2", "save_every_n_steps=null"]),
    "eval_mer": ("debug/eval_tiny", ["max_samples=4"]),
}


def run(args, tmp_path, timeout=600, extra_env=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra_env or {})
    proc = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def test_every_recipe_has_a_cli_test():
    recipes = {r.name for r in tune_cli_ext.discover()}
    assert recipes, "no recipes discovered in recipes/"
    assert recipes <= set(QUICK_RUNS), f"add QUICK_RUNS entries for {sorted(recipes - set(QUICK_RUNS))}"


def test_every_config_is_registered():
    assert tune_cli_ext.check_registry() == []


def test_config_header_launch_line_parsing(tmp_path):
    cases = {
        "# Run:\n#   tune run --nproc_per_node 8 grpo_mer_r1_distributed --config x/y\nk: 1\n": "grpo_mer_r1_distributed",
        "#   tune run recipes/sft_distributed.py --config recipes/configs/debug/sft_tiny.yaml\n": "sft_distributed",
        "# tune run --nnodes 2 --nproc_per_node 8 --rdzv_endpoint h:29500 recipes/eval_mer.py --config c\n": "eval_mer",
        "# no launch line\nk: 1\n# tune run x --config y\n": None,  # comment after the header is ignored
    }
    for text, expected in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(text)
        assert tune_cli_ext.config_recipe_name(path) == expected, text


def test_tune_ls_lists_merr1_next_to_torchtune(tmp_path):
    out = run([TUNE, "ls"], tmp_path)
    assert "full_finetune_distributed" in out  # torchtune's own
    for recipe in tune_cli_ext.discover():
        assert recipe.name in out
        for config_name, _ in recipe.configs:
            assert config_name in out


def test_tune_cp_recipe_and_config(tmp_path):
    for recipe in tune_cli_ext.discover():
        dest = tmp_path / f"my_{recipe.name}.py"
        run([TUNE, "cp", recipe.name, str(dest)], tmp_path)
        assert dest.read_text() == recipe.path.read_text()
        for config_name, config_path in recipe.configs:
            dest = tmp_path / (config_name.replace("/", "_") + ".yaml")
            run([TUNE, "cp", config_name, str(dest)], tmp_path)
            assert dest.read_text() == config_path.read_text()


@pytest.mark.parametrize("recipe", sorted(QUICK_RUNS))
def test_tune_run_by_path_single_process(recipe, tmp_path):
    if not (REPO_ROOT / "recipes" / f"{recipe}.py").exists():
        pytest.fail(f"recipe {recipe} listed in QUICK_RUNS but missing")
    config, overrides = QUICK_RUNS[recipe]
    out_dir = tmp_path / "out"
    run(
        [TUNE, "run", f"recipes/{recipe}.py", "--config", f"recipes/configs/{config}.yaml",
         f"output_dir={out_dir}", *overrides],
        tmp_path,
    )
    assert out_dir.is_dir()


@pytest.mark.parametrize("recipe", sorted(QUICK_RUNS))
def test_tune_run_by_name(recipe, tmp_path):
    config, overrides = QUICK_RUNS[recipe]
    out_dir = tmp_path / "out"
    run([TUNE, "run", recipe, "--config", config, f"output_dir={out_dir}", *overrides], tmp_path)
    assert out_dir.is_dir()


@pytest.mark.parametrize("recipe", sorted(QUICK_RUNS))
def test_tune_run_two_gloo_ranks(recipe, tmp_path):
    config, overrides = QUICK_RUNS[recipe]
    out_dir = tmp_path / "out"
    run(
        [TUNE, "run", "--nproc_per_node", "2", f"recipes/{recipe}.py", "--config",
         f"recipes/configs/{config}.yaml", f"output_dir={out_dir}", *overrides],
        tmp_path,
    )
    assert out_dir.is_dir()


def test_copied_recipe_runs(tmp_path):
    """`tune cp` a recipe into the repo root and run the copy by path (the edit-a-recipe workflow)."""
    name = "sft_distributed"
    config, overrides = QUICK_RUNS[name]
    copy = REPO_ROOT / "my_sft_copy_for_test.py"
    try:
        run([TUNE, "cp", name, str(copy)], tmp_path)
        run([TUNE, "run", copy.name, "--config", config, f"output_dir={tmp_path / 'out'}", *overrides], tmp_path)
    finally:
        copy.unlink(missing_ok=True)


def test_import_merr1_does_not_import_torchtune():
    """Issue 2 acceptance: the library never pulls torchtune (slow to import, recipe-only).

    torchao is not checked: transformers imports it on its own when it is installed.
    """
    code = (
        "import importlib, pkgutil, sys, merr1\n"
        "for m in pkgutil.walk_packages(merr1.__path__, 'merr1.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torchtune')\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
