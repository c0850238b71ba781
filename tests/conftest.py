import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests import the checkout they live in (also from a git worktree), not another editable install.
sys.path.insert(0, str(REPO_ROOT))
# Shared test helpers (tune_helpers.py) importable from every test folder.
sys.path.insert(1, str(REPO_ROOT / "tests"))
# Component fixtures (model_fixtures.py, dist_helpers.py) also for the tests in its subfolders.
sys.path.insert(2, str(REPO_ROOT / "tests" / "merr1" / "components"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
