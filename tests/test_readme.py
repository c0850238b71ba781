"""The README's two commands are the scripts CI runs (issues 2 and 16).

- ``<!-- main-job -->`` and ``<!-- test-command -->``: an HTML comment line right before a fenced
  block holding just that one command; ``.ci/run`` calls exactly the test command.
- The manual install lines (``<!-- install ... -->`` block) are the ones scripts/env.sh runs.
"""

import re

from tune_helpers import REPO_ROOT

README = REPO_ROOT / "README.md"


def marked_command(text: str, marker: str) -> list[str]:
    """Lines of the fenced block right after the line ``<!-- marker -->``."""
    match = re.search(rf"^<!-- {marker} -->\n```(?:bash)?\n(.*?)```", text, re.S | re.M)
    assert match, f"README has no `<!-- {marker} -->` line right before a fenced block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def _block(text: str, marker: str) -> list[str]:
    match = re.search(rf"<!-- {marker}:.*?-->\s*```bash\n(.*?)```\s*<!-- end {marker} -->", text, re.S)
    assert match, f"README has no <!-- {marker} --> block"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def test_readme_main_job_and_test_command_are_single_commands_first_in_the_readme():
    text = README.read_text()
    main, tests = marked_command(text, "main-job"), marked_command(text, "test-command")
    assert main == ["bash scripts/run_quickstart.sh"]
    assert tests == ["bash scripts/run_tests.sh"]
    # Shown first: the README's first two fenced blocks are these two.
    fences = [m.start() for m in re.finditer(r"^```", text, re.M)]  # opening and closing fences
    assert text[: fences[0]].rstrip().endswith("<!-- main-job -->")
    assert text[: fences[2]].rstrip().endswith("<!-- test-command -->")


def test_ci_calls_exactly_the_test_command():
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    (command,) = marked_command(README.read_text(), "test-command")
    assert ci_lines.count(command) == 1
    # Nothing else in CI runs pytest or installs: the test command does both.
    others = [line for line in ci_lines if re.match(r"(python\S*|pip\S*|pytest|\S*/activate)\b", line)]
    assert others == [], others


def test_readme_manual_install_lines_are_the_ones_env_sh_runs():
    install = [line for line in _block(README.read_text(), "install") if line.startswith("pip ")]
    assert install == ["pip install torch==2.13.0", 'pip install -e ".[dev,media]"']
    env_sh = (REPO_ROOT / "scripts" / "env.sh").read_text()
    assert 'MERR1_TORCH_PIN="torch==2.13.0"' in env_sh and 'MERR1_EXTRAS=".[dev,media]"' in env_sh
    torch_at, extras_at = env_sh.index('pip install "$MERR1_TORCH_PIN"'), env_sh.index('pip install -e "$MERR1_EXTRAS"')
    assert torch_at < extras_at, "torch must be installed first"


def test_readme_mentions_every_recipe_and_variant_config():
    readme = README.read_text()
    for recipe in (REPO_ROOT / "recipes").glob("*.py"):
        if not recipe.name.startswith("_"):
            assert recipe.name in readme, recipe.name
    for config in (REPO_ROOT / "recipes" / "configs" / "qwen2_5_omni" / "variants").glob("*.yaml"):
        assert f"qwen2_5_omni/variants/{config.stem}" in readme, config.name
    for config in (REPO_ROOT / "recipes" / "configs" / "debug" / "variants").glob("*.yaml"):
        assert f"debug/variants/{config.stem}" in readme, config.name
