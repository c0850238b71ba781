"""Convert the official AffectGPT emotion-wheel files into merr1's data files (dev-time only).

Reads ``wheel1..5.xlsx``, ``synonym.xlsx`` and ``format.csv`` (AffectGPT, Apache-2.0) with
openpyxl and writes, under ``merr1/assets/emotion_wheel/``:

- ``wheels.json``: per wheel, its ``[level1, level2, level3]`` rows in file order, blanks filled
  from the row above, every cell stripped and lower-cased;
- ``format_map.json``: surface form -> its format names (plus each name -> itself);
- ``synonym_map.json``: synonym -> its wheel words merged over the 8 runs (plus each wheel word
  -> itself);
- ``word_table.json``: word -> level-1 category on each wheel (``null`` = dropped), built from
  the three files above by ``merr1.components.emotion_wheel.build_word_table``;
- ``LICENSE`` (copied) and ``PROVENANCE.md`` (source, licence, checksums).

Reading rules (METHOD section 2), matching the official pandas-based reader: a blank cell means
"same as the row above"; trailing empty rows are ignored; a synonym cell is split with the
prediction-string rule (``parse_emotion_list``). Maps list their values sorted and de-duplicated,
keys sorted, one entry per line so that diffs stay readable. The script refuses inputs the
official reader would treat differently (cells pandas reads as missing, non-text cells,
un-normalised ``format.csv`` entries, synonym words absent from every wheel).

Usage (from the repository root)::

    python scripts/convert_emotion_wheel.py [--src tests/fixtures/affectgpt_emotion_wheel]
        [--out merr1/assets/emotion_wheel]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run from a checkout: import this checkout's merr1, not another installed copy.
sys.path.insert(0, str(REPO_ROOT))

from merr1.components.emotion_wheel import (  # noqa: E402
    NUM_WHEELS,
    build_word_table,
    parse_emotion_list,
)

DEFAULT_SRC = REPO_ROOT / "tests" / "fixtures" / "affectgpt_emotion_wheel"  # the official files, unchanged
DEFAULT_OUT = REPO_ROOT / "merr1" / "assets" / "emotion_wheel"
UPSTREAM = "AffectGPT project (https://github.com/zeroQiaoba/AffectGPT), folder AffectGPT/emotion_wheel/"
UPSTREAM_COMMIT = "d961cab"
SOURCE_FILES = [f"wheel{k + 1}.xlsx" for k in range(NUM_WHEELS)] + ["synonym.xlsx", "format.csv", "LICENSE"]
NUM_SYNONYM_RUNS = 8
# Strings pandas' readers turn into NaN by default: the official reader would see a blank cell.
_PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}


def _sheet_rows(path: Path) -> tuple[list[str], list[tuple]]:
    import openpyxl  # dev-only dependency

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    rows = [tuple(row) for row in workbook.worksheets[0].iter_rows(values_only=True)]
    workbook.close()
    while rows and all(cell is None for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise ValueError(f"{path}: empty sheet")
    header = [str(cell) if cell is not None else "" for cell in rows[0]]
    for i, row in enumerate(rows[1:], start=2):
        for cell in row:
            if cell is not None and not isinstance(cell, str):
                raise ValueError(f"{path} row {i}: non-text cell {cell!r}")
            if isinstance(cell, str) and cell in _PANDAS_NA:
                raise ValueError(f"{path} row {i}: cell {cell!r} would be read as missing officially")
    return header, rows[1:]


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise ValueError(f"{path}: missing column {name!r} (found {header})")
    return header.index(name)


def read_wheel(path: Path) -> list[list[str]]:
    """Rows ``[level1, level2, level3]`` of one wheel, blanks filled, cells stripped + lower-cased."""
    header, rows = _sheet_rows(path)
    cols = [_column(header, f"level{i}", path) for i in (1, 2, 3)]
    current: list[str | None] = [None, None, None]
    out = []
    for i, row in enumerate(rows, start=2):
        for j, col in enumerate(cols):
            if row[col] is not None:
                current[j] = row[col].strip().lower()
        if None in current or "" in current:
            raise ValueError(f"{path} row {i}: no value to fill a blank cell from, or a blank text cell")
        out.append(list(current))
    return out


def read_synonym_map(path: Path, wheel_words: set[str]) -> dict[str, list[str]]:
    """Synonym -> wheel words, merged over the 8 runs; each wheel word -> itself."""
    header, rows = _sheet_rows(path)
    merged: dict[str, set[str]] = {}
    for run in range(1, NUM_SYNONYM_RUNS + 1):
        word_col = _column(header, f"word_run{run}", path)
        syn_col = _column(header, f"synonym_run{run}", path)
        for i, row in enumerate(rows, start=2):
            if row[word_col] is None:
                raise ValueError(f"{path} row {i}: blank word_run{run}")
            word = row[word_col].strip().lower()
            if word not in wheel_words:
                raise ValueError(f"{path} row {i}: word_run{run} {word!r} is in no wheel")
            merged.setdefault(word, set()).add(word)
            for synonym in parse_emotion_list(row[syn_col]):
                merged.setdefault(synonym, set()).add(word)
    return {key: sorted(merged[key]) for key in sorted(merged)}


def read_format_map(path: Path) -> dict[str, list[str]]:
    """Surface form -> format names; each name -> itself."""
    merged: dict[str, set[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        name_col, format_col = _column(header, "name", path), _column(header, "format", path)
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            name, forms = row[name_col], row[format_col]
            if name in _PANDAS_NA or name != name.strip().lower():
                raise ValueError(f"{path} line {i}: name {name!r} is blank or not normalised")
            # The official reader keeps names and forms as written (forms only stripped); refuse
            # entries where lower-casing would change anything.
            if forms != forms.lower():
                raise ValueError(f"{path} line {i}: format cell {forms!r} is not lower-case")
            for form in parse_emotion_list(forms):
                merged.setdefault(form, set()).add(name)
            merged.setdefault(name, set()).add(name)
    return {key: sorted(merged[key]) for key in sorted(merged)}


def dumps_lines(obj: dict) -> str:
    """A JSON object with one ``"key": value`` entry per line (stable, diff-friendly)."""
    lines = [f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}" for key, value in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def dumps_wheels(wheels: dict[str, list[list[str]]]) -> str:
    """``{"wheel1": [[l1, l2, l3], ...], ...}`` with one row per line."""
    parts = []
    for name, rows in wheels.items():
        body = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows)
        parts.append(f"{json.dumps(name)}: [\n{body}\n]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def provenance(src: Path) -> str:
    checksums = "\n".join(
        f"| `{name}` | `{hashlib.sha256((src / name).read_bytes()).hexdigest()}` |" for name in SOURCE_FILES
    )
    return f"""# Provenance of the emotion-wheel data

Converted from the emotion-wheel files of the {UPSTREAM} at upstream commit {UPSTREAM_COMMIT}
(August 2025), licensed under the Apache License 2.0 (copy in `LICENSE` beside this file).
Copyright of the source data remains with the AffectGPT authors.

The files here were **converted, not changed**: `scripts/convert_emotion_wheel.py` re-expresses
the same content as JSON, applying only the official reading rules of the MER-UniBench evaluation
(METHOD section 2): wheel cells stripped and lower-cased with blank cells filled from the row
above; synonym words and synonyms stripped and lower-cased, synonym cells split like prediction
strings; maps merged over all entries (and over the 8 synonym runs), each name / wheel word also
mapping to itself. `word_table.json` is derived from the three other files (precomputed mapping).

| file | content |
|---|---|
| `wheels.json` | `wheel1.xlsx` .. `wheel5.xlsx`: rows `[level1, level2, level3]` |
| `synonym_map.json` | `synonym.xlsx`: synonym -> wheel words |
| `format_map.json` | `format.csv`: surface form -> names |
| `word_table.json` | derived: word -> level-1 category on wheels 1..5 (`null` = dropped) |

SHA-256 of the source files:

| source file | sha256 |
|---|---|
{checksums}
"""


def convert(src: Path, out: Path) -> None:
    """Write all data files for the reference files in ``src`` into ``out``."""
    src, out = Path(src), Path(out)
    for name in SOURCE_FILES:
        if not (src / name).is_file():
            raise FileNotFoundError(f"reference file missing: {src / name}")
    wheels = {f"wheel{k + 1}": read_wheel(src / f"wheel{k + 1}.xlsx") for k in range(NUM_WHEELS)}
    wheel_words = {word for rows in wheels.values() for row in rows for word in row}
    synonym_map = read_synonym_map(src / "synonym.xlsx", wheel_words)
    format_map = read_format_map(src / "format.csv")
    table = build_word_table(format_map, synonym_map, list(wheels.values()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "wheels.json").write_text(dumps_wheels(wheels), encoding="utf-8")
    (out / "synonym_map.json").write_text(dumps_lines(synonym_map), encoding="utf-8")
    (out / "format_map.json").write_text(dumps_lines(format_map), encoding="utf-8")
    (out / "word_table.json").write_text(
        dumps_lines({word: list(table[word]) for word in sorted(table)}), encoding="utf-8"
    )
    shutil.copyfile(src / "LICENSE", out / "LICENSE")
    (out / "PROVENANCE.md").write_text(provenance(src), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with the official files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    convert(args.src, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
