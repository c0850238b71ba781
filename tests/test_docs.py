"""The repo's own docs: examples run, and nothing refers to files outside the repository."""

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


def test_the_example_reward_of_the_reward_contract_runs_and_is_the_shipped_one():
    from merr1.rewards import LengthPenalty, RewardBatch

    (code,) = _python_blocks(REPO_ROOT / "docs" / "rewards.md")
    namespace: dict = {}
    exec(compile(code, "docs/rewards.md", "exec"), namespace)  # noqa: S102
    example = namespace["LengthPenalty"](max_length=8, buffer=4)
    shipped = LengthPenalty(max_length=8, buffer=4)
    batch = RewardBatch(
        responses=[["a b c d", "a b c d e f"], ["w " * 8, "w " * 20]],  # 4, 6, 8, 20 words
        labels=[["happy"], ["sad"]],
    )  # fmt: skip
    expected = [[0.0, -0.5], [-1.0, -1.0]]  # threshold 4: (4 - 6) / 4, (4 - 8) / 4, capped at -1
    assert example(batch).rewards["length"].tolist() == expected == shipped(batch).rewards["length"].tolist()
    assert example.outputs == shipped.outputs == ("length",)
    with pytest.raises(ValueError, match="unit"):
        namespace["LengthPenalty"](max_length=8, buffer=4, unit="tokens")


def test_docs_pages_linked_from_code_exist():
    cited = set()
    for path in [*REPO_ROOT.glob("merr1/**/*.py"), *REPO_ROOT.glob("recipes/**/*"), *REPO_ROOT.glob("docs/*.md")]:
        if path.is_file():
            cited |= set(re.findall(r"docs/[A-Za-z0-9_]+\.md", path.read_text(errors="replace")))
    assert cited, "no docs page cited"
    missing = sorted(page for page in cited if not (REPO_ROOT / page).is_file())
    assert not missing, missing


def test_nothing_in_the_repo_refers_to_files_outside_it():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"\.\./shared|/work/shared|shared/docs|shared/reference|DESIGN\.md|CONTRACTS\.md")
    offenders = []
    for name in tracked.splitlines():
        path = REPO_ROOT / name
        if name.startswith("tests/fixtures/") or name == "tests/test_docs.py" or not path.is_file():
            continue
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".json", ".cfg"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
