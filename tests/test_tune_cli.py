"""The README's literal `tune` commands, run as subprocesses from the repo root (issue 2).

`tune ls`, `tune cp`, `tune run <name> --config <registered name>` for every recipe, and a copied
recipe run by path here. The path forms `tune run recipes/<recipe>.py --config <yaml>` (one
process) and `tune run --nproc_per_node 2 recipes/<recipe>.py ...` (two gloo ranks) run for every
recipe in tests/recipes/test_<recipe>.py (`test_every_recipe_runs_by_path_on_one_and_two_ranks`
checks that they do).
"""

import os
import subprocess
import sys

import pytest
from tune_helpers import REPO_ROOT, tune, tune_run

import tune_cli_ext

# Every recipe needs a fast CPU config and overrides that make one run take seconds. A recipe
# added to recipes/ without an entry here fails `test_every_recipe_has_a_cli_test`.
QUICK_RUNS = {
    "sft_distributed": ("debug/sft_tiny", ["max_steps_per_epoch=2", "epochs=1", "lr_scheduler.num_warmup_steps=1",
                                           "save_every_n_steps=null"]),
    "grpo_mer_r1_distributed": ("debug/grpo_mer_r1_tiny", ["max_steps_per_epoch=2", "batch_size=2",
                                                           "gradient_accumulation_steps=1", "generation.max_new_tokens=8"]),
    "eval_mer": ("debug/eval_tiny", ["max_samples=4", "sampling.max_new_tokens=8"]),
    "eval_mme_emotion": ("debug/eval_mme_emotion_tiny", ["tasks=[ER-Lab]", "max_samples=2", "sampling.max_new_tokens=4"]),
}  # fmt: skip


def test_every_recipe_has_a_cli_test():
    recipes = {r.name for r in tune_cli_ext.discover()}
    assert recipes, "no recipes discovered in recipes/"
    assert recipes <= set(QUICK_RUNS), f"add QUICK_RUNS entries for {sorted(recipes - set(QUICK_RUNS))}"


def test_every_recipe_runs_by_path_on_one_and_two_ranks():
    from pathlib import Path

    for recipe in tune_cli_ext.discover():
        test_file = Path(__file__).parent / "recipes" / f"test_{recipe.name}.py"
        assert test_file.is_file(), f"{recipe.name} has no tests/recipes/test_{recipe.name}.py"
        text = test_file.read_text()
        assert f"recipes/{recipe.name}.py" in text and "nproc=2" in text, test_file


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


def test_tune_ls_lists_merr1_first_then_torchtune():
    out = tune(["ls"]).stdout
    assert "full_finetune_distributed" in out  # torchtune's own
    first_torchtune = out.index("full_finetune_distributed")
    for recipe in tune_cli_ext.discover():
        assert recipe.name in out[:first_torchtune], f"{recipe.name} is not listed before torchtune's recipes"
        for config_name, _ in recipe.configs:
            assert config_name in out[:first_torchtune]


def test_merr1_tune_ls_lists_only_merr1_without_importing_torchtune():
    """`merr1-tune ls` (tune_cli_ext:main_merr1): torchtune's table of merr1's recipes only, and no torchtune import."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    code = (
        "import sys, tune_cli_ext; sys.argv = ['merr1-tune', 'ls']; tune_cli_ext.main_merr1()\n"
        "assert 'torchtune' not in sys.modules, 'merr1-tune ls imported torchtune'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # The same table torchtune's own `ls` prints for a registry holding merr1's recipes only.
    code = (
        "import sys, tune_cli_ext\n"
        "from torchtune._recipe_registry import get_all_recipes\n"
        "mine = tune_cli_ext.register(); registry = get_all_recipes()\n"
        "registry[:] = [r for r in registry if r.name in mine]\n"
        "sys.argv = ['tune', 'ls']\n"
        "from torchtune._cli.tune import main; main()\n"
    )
    reference = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    assert proc.stdout == reference.stdout
    assert "full_finetune_distributed" not in proc.stdout
    for recipe in tune_cli_ext.discover():
        for config_name, _ in recipe.configs:
            assert config_name in proc.stdout


def test_register_is_idempotent_and_puts_merr1_first():
    from torchtune._recipe_registry import get_all_recipes

    mine = tune_cli_ext.register()
    before = [r.name for r in get_all_recipes()]
    assert tune_cli_ext.register() == mine
    after = [r.name for r in get_all_recipes()]
    assert after == before and after[: len(mine)] == mine


def test_tune_cp_recipe_and_config(tmp_path):
    """Each recipe and one config of each (every config's registration: `tune ls` above)."""
    for recipe in tune_cli_ext.discover():
        dest = tmp_path / f"my_{recipe.name}.py"
        tune(["cp", recipe.name, str(dest)])
        assert dest.read_text() == recipe.path.read_text()
        config_name, config_path = recipe.configs[0]
        dest = tmp_path / "my.yaml"
        tune(["cp", config_name, str(dest)])
        assert dest.read_text() == config_path.read_text()


@pytest.mark.parametrize("recipe", sorted(QUICK_RUNS))
def test_tune_run_by_name(recipe, tmp_path):
    config, overrides = QUICK_RUNS[recipe]
    tune_run(recipe, config, [f"output_dir={tmp_path}", *overrides])
    assert any(tmp_path.iterdir())


def test_copied_recipe_runs(tmp_path):
    """`tune cp` a recipe into the repo root and run the copy by path (the edit-a-recipe workflow)."""
    name = "sft_distributed"
    config, overrides = QUICK_RUNS[name]
    copy = REPO_ROOT / "my_sft_copy_for_test.py"
    try:
        tune(["cp", name, str(copy)])
        tune_run(copy.name, config, [f"output_dir={tmp_path}", *overrides])
    finally:
        copy.unlink(missing_ok=True)
    assert (tmp_path / "hf" / "config.json").is_file()


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
