"""Extract the MME-Emotion prompt texts from the official code into merr1's data files (dev-time only).

The official repository (FunAudioLLM/MME-Emotion, MIT) builds its prompts as Python f-strings:
the step-extraction prompt (``extract_step/<TASK>/code/extract_step.py``) as implicitly
concatenated f-strings, the judge prompt (``eval_cot/<TASK>/code/eval_cot_gpt4o.py``) as an
indented triple-quoted f-string whose lines end with backslash continuations. Retyping them
would lose their whitespace (24-space indents, missing newlines between examples, trailing
spaces), so this script reads each source file with ``ast`` and renders the f-string exactly as
Python would, with every interpolated expression replaced by a named placeholder:

- extraction: ``entry['model_response']`` -> ``{model_response}``;
- judge: ``entry['audio_clue']`` -> ``{audio_clue}``, ``entry['ground_truth']`` ->
  ``{ground_truth}``, ``entry['step']`` -> ``{step}``.

``merr1.components.mme_emotion.render_template`` fills the placeholders in one pass with
``str(value)``, which is what the f-strings do (no conversion, no format spec: checked here).

Written under ``merr1/assets/mme_emotion/``: ``prompts.json`` (system message, per-task
extraction and judge templates), ``LICENSE`` (the official MIT licence, copied) and
``PROVENANCE.md`` (repository, commit, files, line ranges, SHA-256 of every source file).

Usage (from the repository root; ``--repo`` is a checkout of FunAudioLLM/MME-Emotion, e.g.
``git clone https://github.com/FunAudioLLM/MME-Emotion``)::

    python scripts/convert_mme_emotion_prompts.py --repo /path/to/MME-Emotion \
        [--commit 0c265d840dedac7f76c28822652e48575ab262ee] [--out merr1/assets/mme_emotion]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "merr1" / "assets" / "mme_emotion"
UPSTREAM = "https://github.com/FunAudioLLM/MME-Emotion"
TASKS = ("ER-Lab", "ER-Wild", "Noise-ER", "FG-ER", "ML-ER", "SA", "FG-SA", "IR")
EXTRACT_FILE = "extract_step/{task}/code/extract_step.py"
JUDGE_FILE = "eval_cot/{task}/code/eval_cot_gpt4o.py"
EXTRACT_FIELDS = ("model_response",)
JUDGE_FIELDS = ("audio_clue", "ground_truth", "step")


def _placeholder(node: ast.FormattedValue, source: str, path: Path) -> str:
    # entry['<field>'] with no conversion and no format spec -> "{<field>}".
    expr = node.value
    if node.conversion != -1 or node.format_spec is not None:
        raise ValueError(f"{path}:{node.lineno}: f-string field with a conversion or format spec")
    if not (
        isinstance(expr, ast.Subscript)
        and isinstance(expr.value, ast.Name)
        and expr.value.id == "entry"
        and isinstance(expr.slice, ast.Constant)
        and isinstance(expr.slice.value, str)
    ):
        raise ValueError(f"{path}:{node.lineno}: unexpected f-string field {ast.get_source_segment(source, expr)!r}")
    return "{" + expr.slice.value + "}"


def render_fstring(node: ast.JoinedStr, source: str, path: Path) -> str:
    """The f-string's text with each ``entry['x']`` field replaced by ``{x}``."""
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            if "{" in value.value or "}" in value.value:
                raise ValueError(f"{path}:{node.lineno}: literal braces would clash with the placeholders")
            parts.append(value.value)
        else:
            parts.append(_placeholder(value, source, path))
    return "".join(parts)


def _fields(node: ast.JoinedStr) -> tuple[str, ...]:
    return tuple(
        v.value.slice.value
        for v in node.values
        if isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Subscript)
        and isinstance(v.value.slice, ast.Constant)
    )  # fmt: skip


def find_prompt(path: Path, fields: tuple[str, ...]) -> tuple[str, int, int]:
    """(template, first line, last line) of the one f-string whose fields are exactly ``fields``."""
    source = path.read_text(encoding="utf-8")
    found = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.JoinedStr) and _fields(n) == fields]
    if len(found) != 1:
        raise ValueError(f"{path}: expected exactly one f-string with fields {fields}, found {len(found)}")
    node = found[0]
    return render_fstring(node, source, path), node.lineno, node.end_lineno


def find_system_message(path: Path) -> tuple[str, int]:
    """(text, line) of the ``{"role": "system", "content": "..."}`` message."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            items = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
            role, content = items.get("role"), items.get("content")
            if isinstance(role, ast.Constant) and role.value == "system" and isinstance(content, ast.Constant):
                return content.value, content.lineno
    raise ValueError(f"{path}: no system message found")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


QUESTIONS_PROVENANCE = """\
## `questions.json` (not from the MIT repository)

The official code has no inference script and no question text for the evaluated model. The
per-task question wordings in `questions.json` are transcribed from the case-study figures of the
official project page (https://github.com/mme-emotion/mme-emotion.github.io, commit
a4efd8b6277185056e48ccf9faaceab2c37f889d, `static/images/case/fig_case_<task>.png`, embedded at
`index.html` L698-741), "Question:" panels. The page's footer licenses the website template under
CC BY-SA 4.0; the figures state no licence. Only these one-sentence wordings are reproduced. How
the question, the candidate labels and any answer-format instruction were joined for the models
of the paper is not published: merr1's template is a reconstruction (see `docs/mme_emotion.md`).
"""


def convert(repo: Path, out: Path, commit: str | None = None) -> dict:
    """Write ``prompts.json``, ``LICENSE`` and ``PROVENANCE.md`` into ``out``; returns the prompts."""
    repo, out = Path(repo), Path(out)
    commit = commit or _git_commit(repo) or "unknown"
    prompts: dict = {"system": None, "extract_step": {}, "judge": {}}
    rows, hashes = [], []
    for task in TASKS:
        stages = (("extract_step", EXTRACT_FILE, EXTRACT_FIELDS), ("judge", JUDGE_FILE, JUDGE_FIELDS))
        for kind, pattern, fields in stages:
            rel = pattern.format(task=task)
            path = repo / rel
            template, first, last = find_prompt(path, fields)
            prompts[kind][task] = template
            system, system_line = find_system_message(path)
            if prompts["system"] is None:
                prompts["system"] = system
            elif system != prompts["system"]:
                raise ValueError(f"{path}:{system_line}: system message differs from the other files")
            rows.append(f"| `{kind}` / {task} | `{rel}` | L{first}-{last} (system message L{system_line}) |")
            hashes.append(f"| `{rel}` | `{_sha256(path)}` |")
    hashes.append(f"| `LICENSE.txt` | `{_sha256(repo / 'LICENSE.txt')}` |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.json").write_text(json.dumps(prompts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(repo / "LICENSE.txt", out / "LICENSE")
    provenance = [
        "# Provenance of the MME-Emotion prompt texts",
        "",
        f"`prompts.json` holds the prompt texts of the official MME-Emotion evaluation code ({UPSTREAM},",
        f"commit `{commit}`), MIT License, Copyright (c) 2025 Fan Zhang (copy in `LICENSE` beside this",
        "file). Generated by `scripts/convert_mme_emotion_prompts.py`, which renders each f-string",
        "exactly as Python does (whitespace, missing newlines and typos kept) with the interpolated",
        "fields replaced by `{model_response}`, `{audio_clue}`, `{ground_truth}` and `{step}`:",
        "",
        "- `system`: the system message of every extraction and judge request (identical in all files);",
        "- `extract_step[TASK]`: the user message of step extraction (stage C);",
        "- `judge[TASK]`: the text part of the judge's user message (stage D; the frames follow it).",
        "",
        "| prompt | file | lines |",
        "|---|---|---|",
        *rows,
        "",
        "SHA-256 of the source files:",
        "",
        "| source file | sha256 |",
        "|---|---|",
        *hashes,
        "",
        QUESTIONS_PROVENANCE,
    ]
    (out / "PROVENANCE.md").write_text("\n".join(provenance), encoding="utf-8")
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="checkout of FunAudioLLM/MME-Emotion")
    parser.add_argument("--commit", default=None, help="commit of the checkout (default: git rev-parse HEAD)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    convert(args.repo, args.out, args.commit)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
