"""Teach torchtune's ``tune`` command about merr1's recipes and configs.

torchtune (0.6.1) has no plugin hook: ``tune ls/cp/run`` read the list
``torchtune._recipe_registry._ALL_RECIPES`` on every call. merr1 installs a ``tune`` console script
(``pyproject.toml``: ``tune = "tune_cli_ext:main"``) that replaces torchtune's own: it puts
merr1's recipes at the front of that list (``tune ls`` shows them first, before torchtune's ~20
recipes and their ~150 configs) and then runs torchtune's unchanged CLI. ``merr1-tune`` is the same
under a name that torchtune cannot overwrite, except that ``merr1-tune ls`` lists merr1's recipes
only, in torchtune's table format, without importing torchtune (a fraction of a second instead of
the seconds ``import torchtune`` takes).

Discovery (nothing to edit when a recipe or config is added):
- every ``recipes/*.py`` except ``__init__.py`` and files starting with ``_`` is a recipe, named
  after its file stem;
- every ``recipes/configs/**/*.yaml`` is a config named by its path relative to
  ``recipes/configs`` without the suffix (``debug/sft_tiny``); it belongs to the recipe named in the
  ``tune run ... <recipe> --config ...`` launch line of its header comment (the line every config
  opens with). A config whose header names no known recipe is listed under no recipe and reported
  by :func:`check_registry` (a test runs it).

Registered recipes carry absolute file paths, so ``tune run <name>`` and ``tune cp <name>`` use
``runpy.run_path`` / ``torchrun <file>`` and never touch the ``recipes`` package that torchtune's
wheel installs into site-packages. For ``tune run recipes/<recipe>.py`` (a path, run as the module
``recipes.<recipe>``), :func:`main` puts the current directory first on ``sys.path``, as
``python -m`` does, so the repo's ``recipes`` package shadows torchtune's.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent

# The recipe name in a config header's launch line, e.g.
#   tune run --nproc_per_node 8 grpo_mer_r1_distributed --config qwen2_5_omni/7B_grpo_mer_r1
#   tune run recipes/sft_distributed.py --config recipes/configs/debug/sft_tiny.yaml
_LAUNCH_LINE = re.compile(r"^#.*\btune run\b.*?(?:^|\s)(?:recipes/)?([A-Za-z0-9_]+)(?:\.py)?\s+--config\b")


@dataclass(frozen=True)
class MerRecipe:
    name: str
    path: Path
    configs: tuple[tuple[str, Path], ...]  # (config name, absolute path)


def recipes_dir() -> Path:
    """The ``recipes/`` folder next to this file (editable install / clone), else in the cwd."""
    for candidate in (REPO_ROOT / "recipes", Path.cwd() / "recipes"):
        if (candidate / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"merr1's recipes/ folder was not found next to {__file__} or in {Path.cwd()}; "
        "install merr1 from a clone with `pip install -e .`"
    )


def config_recipe_name(config_path: Path) -> str | None:
    """The recipe named by the first ``tune run ... --config`` line of a config's header comment."""
    with open(config_path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                if line.strip():
                    break  # header ended
                continue
            match = _LAUNCH_LINE.search(line)
            if match:
                return match.group(1)
    return None


def discover(root: Path | None = None) -> list[MerRecipe]:
    """All recipes in ``root`` (default :func:`recipes_dir`) with their configs, sorted by name."""
    root = root or recipes_dir()
    names = sorted(p.stem for p in root.glob("*.py") if not p.name.startswith("_"))
    configs: dict[str, list[tuple[str, Path]]] = {name: [] for name in names}
    config_root = root / "configs"
    for yaml_path in sorted(config_root.rglob("*.yaml")):
        recipe = config_recipe_name(yaml_path)
        if recipe in configs:
            config_name = yaml_path.relative_to(config_root).with_suffix("").as_posix()
            configs[recipe].append((config_name, yaml_path.resolve()))
    return [MerRecipe(name, (root / f"{name}.py").resolve(), tuple(configs[name])) for name in names]


def check_registry(root: Path | None = None) -> list[str]:
    """Problems that would hide a config or recipe from ``tune`` (empty list = all good)."""
    root = root or recipes_dir()
    problems = []
    known = {r.name for r in discover(root)}
    for yaml_path in sorted((root / "configs").rglob("*.yaml")):
        recipe = config_recipe_name(yaml_path)
        if recipe not in known:
            problems.append(
                f"{yaml_path}: header launch line names recipe {recipe!r}, not one of {sorted(known)}"
            )
    return problems


def register() -> list[str]:
    """Put merr1's recipes at the front of torchtune's registry, in name order (idempotent).

    Returns:
        The names of merr1's recipes in the registry.
    """
    from torchtune._recipe_registry import Config, Recipe, get_all_recipes

    registry = get_all_recipes()
    mine = [recipe.name for recipe in discover()]
    taken_recipes = {r.name for r in registry}
    taken_configs = {c.name for r in registry if r.name not in mine for c in r.configs}
    added = []
    for recipe in discover():
        if recipe.name in taken_recipes:
            continue
        clashes = [name for name, _ in recipe.configs if name in taken_configs]
        if clashes:
            raise ValueError(f"merr1 config names clash with torchtune's: {clashes}")
        added.append(
            Recipe(
                name=recipe.name,
                file_path=str(recipe.path),
                configs=[Config(name=name, file_path=str(path)) for name, path in recipe.configs],
                supports_distributed=True,
            )
        )
    registry[:0] = added  # in place: torchtune's CLI reads this very list
    return mine


def _cwd_first_on_path() -> None:
    cwd = os.getcwd()
    if sys.path[0] != cwd:
        sys.path.insert(0, cwd)


def main() -> None:
    """``tune`` with merr1's recipes registered (listed first); otherwise torchtune's CLI, unchanged."""
    _cwd_first_on_path()
    register()
    from torchtune._cli.tune import main as tune_main

    try:
        tune_main()
    except BaseException as error:
        # `tune run --nproc_per_node N` runs torchrun in this process: after a preemption save
        # exit 143/130 like a single process does, not torchrun's 1 (merr1/launch.py).
        from merr1.launch import launcher_exit_code

        code = launcher_exit_code(error) if not isinstance(error, SystemExit) else None
        if code is None:
            raise
        print(f"tune: the run was stopped by a signal after its preemption save; exit code {code}", file=sys.stderr)
        sys.exit(code)


def format_listing(recipes: list[MerRecipe]) -> str:
    """``tune ls``'s table (torchtune 0.6.1's format) for ``recipes``."""
    lines = [f"{'RECIPE':<40} {'CONFIG':<40}"]
    for recipe in recipes:
        if not recipe.configs:
            lines.append(f"{recipe.name:<40} {'':<40}")
        for i, (config_name, _) in enumerate(recipe.configs):
            lines.append(f"{recipe.name if i == 0 else '':<40} {config_name:<40}")
    return "\n".join(lines)


def main_merr1() -> None:
    """``merr1-tune``: as :func:`main`, but ``merr1-tune ls`` lists merr1's recipes only (fast)."""
    if sys.argv[1:] == ["ls"]:
        print(format_listing(discover()))
        return
    main()


if __name__ == "__main__":
    main()
