"""scripts/convert_emotion_wheel.py: reproduces the committed data; refuses ambiguous inputs."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from merr1.components.emotion_wheel import ASSET_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "convert_emotion_wheel.py"
# The official files (Apache-2.0, shipped unchanged as a test fixture with their licence and provenance).
REFERENCE = REPO_ROOT / "tests" / "fixtures" / "affectgpt_emotion_wheel"


@pytest.fixture(scope="module")
def convert_module():
    pytest.importorskip("openpyxl")
    spec = importlib.util.spec_from_file_location("convert_emotion_wheel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conversion_reproduces_committed_files(convert_module, tmp_path):
    convert_module.convert(REFERENCE, tmp_path)
    produced = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in ASSET_DIR.iterdir())
    assert produced == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (ASSET_DIR / name).read_bytes(), name


def test_main_cli_writes_to_out(convert_module, tmp_path):
    assert convert_module.main(["--src", str(REFERENCE), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "word_table.json").read_text())["happy"][4] == "powerful"


def test_default_source_is_the_shipped_official_files(convert_module):
    assert convert_module.DEFAULT_SRC == REFERENCE
    assert convert_module.DEFAULT_OUT == ASSET_DIR


def test_provenance_names_upstream_and_licence():
    text = (ASSET_DIR / "PROVENANCE.md").read_text()
    assert "AffectGPT" in text and "d961cab" in text and "Apache License 2.0" in text
    assert "converted, not changed" in text
    assert "Apache License" in (ASSET_DIR / "LICENSE").read_text()


def test_dumps_lines_is_json_one_entry_per_line(convert_module):
    obj = {"a b": ["x", "y"], "c": [None, "z"]}
    text = convert_module.dumps_lines(obj)
    assert json.loads(text) == obj and text.count("\n") == 4
    wheels = {"wheel1": [["a", "b", "c"], ["a", "b", "d"]]}
    assert json.loads(convert_module.dumps_wheels(wheels)) == wheels


# Synthetic inputs for the reading rules and refusals.


def _write_xlsx(path, rows):
    import openpyxl

    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(list(row))
    workbook.save(path)


def test_read_wheel_fills_blanks_and_normalises(convert_module, tmp_path):
    path = tmp_path / "w.xlsx"
    _write_xlsx(
        path,
        [("level1", "level2", "level3"), (" Mad ", "Hurt", "Jealous"), (None, None, " Selfish "),
         (None, "Angry ", "Furious"), (None, None, None)],
    )
    assert convert_module.read_wheel(path) == [
        ["mad", "hurt", "jealous"], ["mad", "hurt", "selfish"], ["mad", "angry", "furious"]
    ]


@pytest.mark.parametrize(
    "rows, match",
    [
        ([("level1", "level2", "level3"), (None, "a", "b")], "no value to fill"),
        ([("level1", "level2", "level3"), ("a", "NA", "b")], "read as missing"),
        ([("level1", "level2", "level3"), ("a", 3, "b")], "non-text cell"),
        ([("level1", "level2", "level3"), ("a", "  ", "b")], "blank text cell"),
        ([("level1", "level2", "other"), ("a", "b", "c")], "missing column 'level3'"),
    ],
)
def test_read_wheel_refuses(convert_module, tmp_path, rows, match):
    path = tmp_path / "w.xlsx"
    _write_xlsx(path, rows)
    with pytest.raises(ValueError, match=match):
        convert_module.read_wheel(path)


def _synonym_rows(word_run2="Care", synonyms_run2="Concern, Attention"):
    header = [f"{kind}_run{i}" for i in range(1, 9) for kind in ("word", "synonym")]
    row = []
    for i in range(1, 9):
        row += [word_run2, synonyms_run2] if i == 2 else ["care", "concern, 'look after'"]
    return [header, row]


def test_read_synonym_map_merges_runs(convert_module, tmp_path):
    path = tmp_path / "s.xlsx"
    _write_xlsx(path, _synonym_rows())
    assert convert_module.read_synonym_map(path, {"care"}) == {
        "attention": ["care"], "care": ["care"], "concern": ["care"], "look after": ["care"]
    }
    _write_xlsx(path, _synonym_rows(word_run2="Caring"))
    with pytest.raises(ValueError, match="'caring' is in no wheel"):
        convert_module.read_synonym_map(path, {"care"})


def test_read_format_map(convert_module, tmp_path):
    path = tmp_path / "f.csv"
    path.write_text('name,format\nabandoned,"abandon, abandons"\nno words,\nabandon,abandon\n')
    assert convert_module.read_format_map(path) == {
        "abandon": ["abandon", "abandoned"], "abandoned": ["abandoned"], "abandons": ["abandoned"],
        "no words": ["no words"],
    }
    path.write_text('name,format\nabandoned,"Abandon"\n')
    with pytest.raises(ValueError, match="not lower-case"):
        convert_module.read_format_map(path)
    path.write_text("name,format\nnull,x\n")
    with pytest.raises(ValueError, match="blank or not normalised"):
        convert_module.read_format_map(path)


def test_convert_reports_missing_source(convert_module, tmp_path):
    with pytest.raises(FileNotFoundError, match="wheel1.xlsx"):
        convert_module.convert(tmp_path, tmp_path / "out")


def test_convert_refuses_a_format_name_without_synonyms(convert_module, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REFERENCE, src)
    with open(src / "format.csv", "a", encoding="utf-8") as f:
        f.write("zzzz,zzzzs\n")
    with pytest.raises(ValueError, match="missing from the synonym map"):
        convert_module.convert(src, tmp_path / "out")
