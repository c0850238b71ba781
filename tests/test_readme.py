"""The README's install and test commands are exactly what .ci/run runs (issue 2)."""

import re

from tune_helpers import REPO_ROOT


def _block(text: str, marker: str) -> list[str]:
    match = re.search(rf"<!-- {marker}:.*?-->\s*```bash\n(.*?)```\s*<!-- end {marker} -->", text, re.S)
    assert match, f"README has no <!-- {marker} --> block"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def test_readme_install_and_test_commands_are_the_ci_ones():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines()]
    install = [line for line in _block(readme, "install") if line.startswith("pip ")]
    assert install == ["pip install torch==2.13.0", 'pip install -e ".[dev,media]"']
    positions = [ci_lines.index(line) for line in install]
    assert positions == sorted(positions), "CI must install in the README's order"
    assert _block(readme, "tests") == ["python -m pytest"]
    assert "python -m pytest" in ci_lines


def test_readme_mentions_every_recipe_and_variant_config():
    readme = (REPO_ROOT / "README.md").read_text()
    for recipe in (REPO_ROOT / "recipes").glob("*.py"):
        if not recipe.name.startswith("_"):
            assert recipe.name in readme, recipe.name
    for config in (REPO_ROOT / "recipes" / "configs" / "qwen2_5_omni" / "variants").glob("*.yaml"):
        assert f"qwen2_5_omni/variants/{config.stem}" in readme, config.name
