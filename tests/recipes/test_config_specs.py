"""Every shipped config passes its recipe's CONFIG_SPEC check (issue 11): no unknown, missing or
mistyped key anywhere, component keys against the component's signature. Static, no model built."""

import importlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from merr1.components.config_checks import check_config
from tune_cli_ext import config_recipe_name

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO_ROOT / "recipes" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT / "recipes" / "configs")))
def test_shipped_config_passes_its_recipe_spec(path):
    recipe = config_recipe_name(path)
    assert recipe is not None, f"{path}: no `tune run ... --config` launch line in the header"
    module = importlib.import_module(f"recipes.{recipe}")
    check_config(OmegaConf.load(path), module.CONFIG_SPEC, what=str(path.relative_to(REPO_ROOT)))


def test_every_recipe_declares_a_config_spec():
    for path in sorted((REPO_ROOT / "recipes").glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"recipes.{path.stem}")
        assert isinstance(getattr(module, "CONFIG_SPEC", None), dict), path.name
