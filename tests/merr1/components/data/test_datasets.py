import csv
import logging
import math
import random

import pytest
import torch
import torch.nn.functional as F

from merr1.components.data.datasets import (
    EVAL_LABELS_CSV,
    IGNORE_INDEX,
    SUBTITLE_CSV,
    TRACK2_CSV,
    TRACK3_CSV,
    BadRowError,
    MERUniBenchDataset,
    mer_caption_plus,
    mer_caption_plus_sample,
    mer_unibench,
    mer_unibench_sample,
    parse_openset,
    parse_openset_cell,
    read_csv,
    split_sft_rl,
)
from merr1.components.data.collate import PromptCollator, SFTCollator, collate_media, mrope_position_ids, pad_sequences
from merr1.components.data.media import cache_path, save_media
from merr1.components.data.sample import make_sample_data
from merr1.components.data.prompts import FAST_THINKING_PREFIX, RESPONSE_FORMATS
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS, tiny_tokenizer

PAD = TINY_SPECIAL_TOKENS["<|endoftext|>"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """A small generated sample set (60 train rows, 12 in the SFT partition, 8 per eval set)."""
    root = tmp_path_factory.mktemp("sample")
    make_sample_data(root, seed=0, num_train=60, num_sft_samples=12, num_eval=8)
    return root


@pytest.fixture(scope="module")
def thinker():
    from merr1.components.models import tiny_thinker

    return tiny_thinker().eval()


def _caption(sample_dir):
    return sample_dir / "mer_caption_plus"


def _write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _copy_caption(sample_dir, tmp_path):
    """A writable copy of the sample MER-Caption+ folder (CSVs + media)."""
    import shutil

    dst = tmp_path / "mcp"
    shutil.copytree(_caption(sample_dir), dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Labels and partition


@pytest.mark.parametrize(
    "text, words",
    [
        ("['Silly', 'Mad']", ["silly", "mad"]),
        ('["happy", "sad"]', ["happy", "sad"]),
        ("happy, sad", ["happy", "sad"]),
        ("[ Worried ]", ["worried"]),
        ("", []),
        ("[]", []),
        ("[", []),
        (None, []),
        (float("nan"), []),
        ("happy and sad; angry", ["happy and sad; angry"]),  # no split on "and" / ";"
    ],
)
def test_parse_openset(text, words):
    assert parse_openset(text) == words


@pytest.mark.parametrize(
    "cell, words",
    [("", []), ("[]", []), (" [] ", []), ("['sad']", ["sad"]),
     ("NA", []), ("None", []), ("null", []), ("nan", []),  # pandas reads these cells as NaN: neutral
     (" None", ["none"])],  # pandas compares the raw cell  # fmt: skip
)
def test_parse_openset_cell(cell, words):
    assert parse_openset_cell(cell) == words


def test_read_subtitles_pandas_na_cells(tmp_path):
    from merr1.components.data.datasets import read_subtitles

    path = tmp_path / "subtitle_chieng.csv"
    _write_csv(path, ["name", "chinese", "english"],
               [["a", "你好", "NA"], ["b", "", "None"], ["c", "x", "  Hello there "], ["d", "y", ""], ["c", "z", "last"]])  # fmt: skip
    assert read_subtitles(path) == {"a": "", "b": "", "c": "last", "d": ""}  # a repeated name keeps its last row
    assert read_subtitles(path, "chinese") == {"a": "你好", "b": "", "c": "z", "d": "y"}


@pytest.mark.parametrize("cell", ["[", "[,]", "[1, 2]", "['', '']", "'''"])
def test_parse_openset_cell_unknown_format(cell):
    with pytest.raises(BadRowError, match="unknown label format"):
        parse_openset_cell(cell)


def test_split_sft_rl_deterministic_and_disjoint():
    names = [f"s{i:04d}" for i in range(500)]
    sft, rl = split_sft_rl(names, 120, seed=3)
    assert len(sft) == 120 and len(rl) == 380
    assert not set(sft) & set(rl) and set(sft) | set(rl) == set(names)
    shuffled = names[:] + names[:10]  # order and duplicates do not matter
    random.Random(0).shuffle(shuffled)
    assert split_sft_rl(shuffled, 120, seed=3) == (sft, rl)
    assert split_sft_rl(names, 120, seed=4)[0] != sft
    assert sft == sorted(sft) and rl == sorted(rl)


def test_split_sft_rl_fixed_values():
    # Pinned so that the partition (and thus published splits) never changes silently.
    assert split_sft_rl([f"n{i}" for i in range(10)], 3, seed=0)[0] == split_sft_rl(
        [f"n{i}" for i in reversed(range(10))], 3, seed=0
    )[0]
    assert split_sft_rl(["a", "b"], 0) == ([], ["a", "b"])
    assert split_sft_rl(["a", "b"], 2) == (["a", "b"], [])


def test_split_sft_rl_too_many():
    with pytest.raises(ValueError, match="num_sft_samples"):
        split_sft_rl(["a", "b"], 3)


# ---------------------------------------------------------------------------------------------
# MER-Caption+ dataset


def test_sft_items_mask_the_prompt(tok, sample_dir):
    ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12)
    assert len(ds) == 12 and not ds.bad_rows
    reasons = {r[0]: r[1] for r in _rows(_caption(sample_dir) / TRACK3_CSV)[1:]}
    opensets = {r[0]: r[1] for r in _rows(_caption(sample_dir) / TRACK2_CSV)[1:]}
    for item in (ds[0], ds[5]):
        ids, labels = item["input_ids"], item["labels"]
        assert ids.shape == labels.shape and ids.dtype == torch.long
        supervised = labels != IGNORE_INDEX
        first = int(supervised.nonzero()[0])
        assert supervised[first:].all() and not supervised[:first].any()
        assert torch.equal(labels[supervised], ids[supervised])
        target = RESPONSE_FORMATS["mer_r1"].format_target(reasons[item["name"]], parse_openset(opensets[item["name"]]))
        assert tok.decode(ids[first:]) == target + "<|im_end|>"
        assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
        assert set(item["media"]) == {
            "input_features", "feature_attention_mask", "pixel_values_videos", "video_grid_thw", "video_second_per_grid",
            "use_audio_in_video",
        }  # fmt: skip
        assert item["media"]["use_audio_in_video"].dtype == torch.bool and bool(item["media"]["use_audio_in_video"])


def test_rl_items_and_partition(tok, sample_dir):
    sft = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12)
    rl = mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12)
    assert len(rl) == 48 and not set(sft.names) & set(rl.names)
    full = {r[0]: parse_openset(r[1]) for r in _rows(_caption(sample_dir) / "full_openset.csv")[1:]}
    item = rl[0]
    assert set(item) == {"name", "prompt_ids", "labels", "media"}
    assert item["labels"] == full[item["name"]]  # RL names carry the full labels
    assert tok.decode(item["prompt_ids"]).endswith("<|im_start|>assistant\n")
    all_rl = mer_caption_plus(tok, _caption(sample_dir), "all", mode="rl")
    assert len(all_rl) == 60


def test_mode_validation(tok, sample_dir):
    with pytest.raises(ValueError, match="mode"):
        mer_caption_plus(tok, _caption(sample_dir), "all")
    with pytest.raises(ValueError, match="split"):
        mer_caption_plus(tok, _caption(sample_dir), "train")
    with pytest.raises(ValueError, match="modalities"):
        mer_caption_plus(tok, _caption(sample_dir), "sft", modalities=["smell"])


def test_text_only_has_no_placeholders(tok, sample_dir):
    ds = mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12, modalities=[])
    ids = ds[0]["prompt_ids"]
    for special in ("<|AUDIO|>", "<|VIDEO|>", "<|audio_bos|>", "<|vision_bos|>"):
        assert (ids == tok.convert_tokens_to_ids(special)).sum() == 0
    assert ds[0]["media"] == {}


def test_empty_openset_is_neutral(tok, sample_dir, tmp_path):
    root = _copy_caption(sample_dir, tmp_path)
    rows = _rows(root / TRACK2_CSV)
    rows[1][1], rows[2][1] = "", "[]"
    _write_csv(root / TRACK2_CSV, rows[0], rows[1:])
    names = {rows[1][0], rows[2][0]}
    sft = mer_caption_plus(tok, root, "all", mode="sft")
    rl = mer_caption_plus(tok, root, "all", mode="rl")
    for i, name in enumerate(sft.names):
        if name in names:
            assert tok.decode(sft[i]["input_ids"]).endswith("<answer>neutral</answer><|im_end|>")
            assert rl[rl.names.index(name)]["labels"] == []


def test_bad_rows_skipped_with_count(tok, sample_dir, tmp_path, caplog):
    root = _copy_caption(sample_dir, tmp_path)
    rows = _rows(root / TRACK2_CSV)
    names = [r[0] for r in rows[1:]]
    rows[1][1] = "["  # unknown label format
    rows.append(list(rows[2]))  # duplicate name
    _write_csv(root / TRACK2_CSV, rows[0], rows[1:])
    subs = [r for r in _rows(root / SUBTITLE_CSV) if r[0] != names[2]]  # missing subtitle
    _write_csv(root / SUBTITLE_CSV, subs[0], subs[1:])
    reasons = _rows(root / TRACK3_CSV)
    reasons[4][1] = "  "  # empty reason (names[3])
    _write_csv(root / TRACK3_CSV, reasons[0], reasons[1:])
    cache_path(root / "media_cache", names[4]).unlink()  # missing media file
    cache_path(root / "media_cache", names[5]).unlink()  # missing media file
    cache_path(root / "media_cache", names[6]).write_bytes(b"not a safetensors file")  # unreadable
    save_media(cache_path(root / "media_cache", names[7]), {"input_features": torch.zeros(1, 16, 8),
               "feature_attention_mask": torch.ones(1, 8, dtype=torch.long)})  # no video  # fmt: skip
    save_media(cache_path(root / "media_cache", names[8]), {"input_features": torch.zeros(1, 16, 2),
               "feature_attention_mask": torch.ones(1, 2, dtype=torch.long), "pixel_values_videos": torch.zeros(4, 1176),
               "video_grid_thw": torch.tensor([[1, 2, 2]]), "video_second_per_grid": torch.tensor([1.0])})  # 0 audio tokens  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="merr1.components.data"):
        ds = mer_caption_plus(tok, root, "all", mode="sft")
    assert [(row.name, row.kind) for row in ds.bad_rows] == [
        (names[0], "unknown label format"), (names[2], "missing subtitle"), (names[3], "missing reason"),
        (names[4], "missing media file"), (names[5], "missing media file"), (names[6], "unreadable media"),
        (names[7], "inconsistent media"), (names[8], "inconsistent media"), (names[1], "duplicate name"),
    ]  # fmt: skip
    assert len(ds) == 60 - 8  # (61 rows with the duplicate)
    summary = [r.message for r in caplog.records if "bad rows (" in r.message]
    assert len(summary) == 1 and "52 samples, skipped 9 bad rows" in summary[0]
    assert "missing media file: 2" in summary[0]
    assert any(names[6] in r.message and "unreadable media" in r.message for r in caplog.records)
    # In rl mode reasons are not needed.
    rl = mer_caption_plus(tok, root, "all", mode="rl")
    assert len(rl) == 53
    # Text-only: media problems do not matter.
    text = mer_caption_plus(tok, root, "all", mode="rl", modalities=[])
    assert [r.kind for r in text.bad_rows] == ["unknown label format", "missing subtitle", "duplicate name"]
    with pytest.raises(ValueError, match="strict=True"):
        mer_caption_plus(tok, root, "all", mode="sft", strict=True)


def test_missing_reason_in_sft_mode(tok, sample_dir, tmp_path):
    root = _copy_caption(sample_dir, tmp_path)
    reasons = _rows(root / TRACK3_CSV)
    _write_csv(root / TRACK3_CSV, reasons[0], reasons[2:])
    ds = mer_caption_plus(tok, root, "all", mode="sft")
    assert [(r.name, r.kind) for r in ds.bad_rows] == [(reasons[1][0], "missing reason")]


@pytest.mark.parametrize("missing", [TRACK2_CSV, TRACK3_CSV, SUBTITLE_CSV])
def test_missing_csv_fails_early(tok, sample_dir, tmp_path, missing):
    root = _copy_caption(sample_dir, tmp_path)
    (root / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        mer_caption_plus(tok, root, "sft", num_sft_samples=12)


def test_missing_column_fails_early(tok, sample_dir, tmp_path):
    root = _copy_caption(sample_dir, tmp_path)
    rows = _rows(root / SUBTITLE_CSV)
    _write_csv(root / SUBTITLE_CSV, ["name", "chinese", "text"], rows[1:])
    with pytest.raises(ValueError, match="english"):
        mer_caption_plus(tok, root, "sft", num_sft_samples=12)


@pytest.mark.parametrize("csv_name", [TRACK2_CSV, TRACK3_CSV, SUBTITLE_CSV])
def test_non_utf8_csv_names_the_file_and_line(tok, sample_dir, tmp_path, csv_name):
    root = _copy_caption(sample_dir, tmp_path)
    rows = _rows(root / csv_name)
    rows[3][-1] = rows[3][-1] + " caf\u00e9"
    with (root / csv_name).open("w", newline="", encoding="latin-1") as f:  # an export in the wrong encoding
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=rf"{csv_name}: line 4 is not UTF-8 \(byte 0xe9 at column \d+\)"):
        mer_caption_plus(tok, root, "sft", num_sft_samples=12)


@pytest.mark.parametrize("strict", [True, False])
def test_header_only_label_file_is_an_error(tok, sample_dir, tmp_path, strict):
    root = _copy_caption(sample_dir, tmp_path)
    _write_csv(root / TRACK2_CSV, ["name", "openset"], [])
    with pytest.raises(ValueError, match="no sample: the label file has a header but no data rows"):
        mer_caption_plus(tok, root, "all", mode="sft", strict=strict)


def test_header_only_eval_labels_is_an_error(tok, sample_dir, tmp_path):
    import shutil

    root = tmp_path / "basic"
    shutil.copytree(_eval_dir(sample_dir, "basic"), root)
    _write_csv(root / EVAL_LABELS_CSV, ["name", "label"], [])
    with pytest.raises(ValueError, match="no sample"):
        mer_unibench(tok, root, modalities=[], strict=True)


def test_utf8_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("\ufeffname,english\r\na,caf\u00e9\r\nb,\"two\r\nlines\"\r\n".encode("utf-8"))
    assert read_csv(path, ("english",)) == [{"name": "a", "english": "caf\u00e9"}, {"name": "b", "english": "two\r\nlines"}]


def test_max_seq_len_truncates_reason_not_answer(tok, sample_dir, caplog):
    full = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12)
    prompt_len = int((full[0]["labels"] == IGNORE_INDEX).sum())
    max_len = prompt_len + 14  # room for the tags, the answer and a few reasoning tokens at most
    with caplog.at_level(logging.INFO, logger="merr1.components.data"):
        ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12, max_seq_len=max_len)
    assert ds.num_truncated > 0 and len(ds) + len(ds.bad_rows) == 12
    assert all(r.kind == "too long" for r in ds.bad_rows)
    assert any("truncated the reasoning" in r.message for r in caplog.records)
    full_items = {full[i]["name"]: full[i] for i in range(len(full))}
    for i in range(len(ds)):
        item = ds[i]
        assert len(item["input_ids"]) <= max_len
        text = tok.decode(item["input_ids"])
        reference = tok.decode(full_items[item["name"]]["input_ids"])
        answer = reference[reference.index("</think><answer>"):]
        assert text.endswith(answer)  # the answer is intact
    with pytest.raises(ValueError, match="no usable sample.*too long"):
        mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12, max_seq_len=10)


@pytest.mark.parametrize("fmt", sorted(RESPONSE_FORMATS))
def test_variant_targets(tok, sample_dir, fmt):
    ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12, response_format=fmt)
    text = tok.decode(ds[0]["input_ids"])
    assert RESPONSE_FORMATS[fmt].instruction in text
    assert text.endswith({"mer_r1": "</answer>", "videoauto_r1": "}", "emo_r3": "</answer>"}[fmt] + "<|im_end|>")


def test_builder_takes_tokenizer_positionally_or_by_keyword(tok, sample_dir):
    a = mer_caption_plus(tok, str(_caption(sample_dir)), "rl", num_sft_samples=12)
    b = mer_caption_plus(tokenizer=tok, data_dir=str(_caption(sample_dir)), split="rl", num_sft_samples=12)
    assert a.names == b.names


def test_sample_builder_generates_then_loads(tok, tmp_path, caplog, monkeypatch):
    from merr1.components.data import sample as data_sample

    small = dict(num_train=40, num_sft_samples=10, num_eval=5)
    monkeypatch.setattr(data_sample, "make_sample_data", lambda out, seed, **kw: make_sample_data(out, seed, **small))
    target = tmp_path / "data" / "sample"
    with caplog.at_level(logging.INFO):
        ds = mer_caption_plus_sample(tok, data_dir=str(target), split="sft", modalities=[])
    assert any("generating the sample data set" in r.message for r in caplog.records)
    assert len(ds) == 10  # the partition recorded in sample_info.json
    rl = mer_caption_plus_sample(tok, data_dir=str(target), split="rl")
    assert len(rl) == 30 and not rl.bad_rows
    with caplog.at_level(logging.WARNING):
        mixed = mer_caption_plus_sample(tok, data_dir=str(target), split="sft", num_sft_samples=20, modalities=[])
    assert len(mixed) == 20 and any("mixes" in r.message for r in caplog.records)
    evals = {name: mer_unibench_sample(tok, name, data_dir=str(target), mode="fast") for name in ("ovmerd", "basic", "sentiment")}
    assert {k: (v.task, len(v)) for k, v in evals.items()} == {
        "ovmerd": ("ovmerd", 5), "basic": ("basic", 5), "sentiment": ("sentiment", 5)
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown sample evaluation set"):
        mer_unibench_sample(tok, "mosi", data_dir=str(target))


@pytest.mark.slow
def test_default_sample_set_from_a_fresh_folder(tok, tmp_path):
    """What the debug configs do on a fresh clone: generate data/sample, then load every split."""
    target = tmp_path / "data" / "sample"
    assert len(mer_caption_plus_sample(tok, data_dir=str(target), split="sft")) == 600
    assert len(mer_caption_plus_sample(tok, data_dir=str(target), split="rl")) == 2000
    for name in ("ovmerd", "basic", "sentiment"):
        assert len(mer_unibench_sample(tok, name, data_dir=str(target))) == 100


# ---------------------------------------------------------------------------------------------
# Evaluation sets


def _eval_dir(sample_dir, name):
    return sample_dir / "eval" / name


@pytest.mark.parametrize("name, task", [("ovmerd", "ovmerd"), ("basic", "basic"), ("sentiment", "sentiment")])
def test_eval_sets(tok, sample_dir, name, task):
    slow = mer_unibench(tok, _eval_dir(sample_dir, name), "slow")
    fast = mer_unibench(tok, _eval_dir(sample_dir, name), "fast")
    assert slow.task == task and slow.name == name and len(slow) == 8
    labels = {r[0]: r[1] for r in _rows(_eval_dir(sample_dir, name) / EVAL_LABELS_CSV)[1:]}
    s, f = slow[0], fast[0]
    assert s["response_prefix"] == "" and f["response_prefix"] == FAST_THINKING_PREFIX
    assert tok.decode(f["prompt_ids"]) == tok.decode(s["prompt_ids"]) + FAST_THINKING_PREFIX
    raw = labels[s["name"]]
    if task == "ovmerd":
        assert s["label"] == raw and s["labels"] == parse_openset(raw) and s["labels"]
    elif task == "basic":
        assert s["label"] == raw and s["labels"] == [raw]
    else:
        assert s["label"] == float(raw) and s["labels"] == []


def test_eval_bad_rows(tok, sample_dir, tmp_path):
    import shutil

    for name, column, bad in (("basic", "label", ["", "42"]), ("sentiment", "score", ["", "high", "nan"])):
        root = tmp_path / name
        shutil.copytree(_eval_dir(sample_dir, name), root)
        rows = _rows(root / EVAL_LABELS_CSV)
        for i, cell in enumerate(bad):
            rows[i + 1][1] = cell
        _write_csv(root / EVAL_LABELS_CSV, ["name", column], rows[1:])
        ds = mer_unibench(tok, root, modalities=[])
        expected = {"basic": ["empty label", "unknown label format"],
                    "sentiment": ["unreadable score"] * 3}[name]  # fmt: skip
        assert [r.kind for r in ds.bad_rows] == expected
        assert len(ds) == 8 - len(bad)
        with pytest.raises(ValueError, match="bad row"):
            mer_unibench(tok, root, modalities=[], strict=True)


def test_eval_label_column_must_be_unique(tok, sample_dir, tmp_path):
    import shutil

    root = tmp_path / "x"
    shutil.copytree(_eval_dir(sample_dir, "basic"), root)
    rows = _rows(root / EVAL_LABELS_CSV)
    _write_csv(root / EVAL_LABELS_CSV, ["name", "label", "score"], [r + ["1"] for r in rows[1:]])
    with pytest.raises(ValueError, match="exactly one label column"):
        MERUniBenchDataset(tok, root)
    with pytest.raises(ValueError, match="mode"):
        MERUniBenchDataset(tok, _eval_dir(sample_dir, "basic"), "medium")
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        MERUniBenchDataset(tok, tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Collation


def test_pad_sequences():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert pad_sequences(seqs, 0, "right").tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_sequences(seqs, 0, "left").tolist() == [[1, 2, 3], [0, 0, 4]]
    with pytest.raises(ValueError):
        pad_sequences(seqs, 0, "middle")


def test_collate_media_shapes_and_padding():
    def audio(n):
        return {"input_features": torch.full((1, 16, n), float(n)), "feature_attention_mask": torch.ones(1, n, dtype=torch.long)}

    def video(t):
        return {"pixel_values_videos": torch.full((4 * t, 1176), float(t)), "video_grid_thw": torch.tensor([[t, 2, 2]]),
                "video_second_per_grid": torch.tensor([1.0])}  # fmt: skip

    out = collate_media([{**audio(5), **video(1)}, {}, {**audio(9)}, video(2)], dtype="bfloat16")
    assert out["input_features"].shape == (2, 16, 9) and out["input_features"].dtype == torch.bfloat16
    assert out["feature_attention_mask"].tolist() == [[1] * 5 + [0] * 4, [1] * 9]
    assert out["input_features"][0, :, 5:].abs().sum() == 0
    assert out["pixel_values_videos"].shape == (12, 1176)
    assert out["pixel_values_videos"][:4].eq(1).all() and out["pixel_values_videos"][4:].eq(2).all()
    assert out["video_grid_thw"].tolist() == [[1, 2, 2], [2, 2, 2]]
    assert out["video_second_per_grid"].tolist() == [1.0, 1.0]
    assert collate_media([{}, {}]) == {}


def test_sft_collator_right_pads(tok, sample_dir):
    ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12)
    items = [ds[i] for i in range(3)]
    batch = SFTCollator(tok)(items)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][row, n:] == PAD).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert torch.equal(batch["labels"][row, :n], items[row]["labels"])
    assert batch["video_grid_thw"].shape == (3, 3)


def test_prompt_collator_left_pads(tok, sample_dir):
    ds = mer_unibench(tok, _eval_dir(sample_dir, "ovmerd"), "fast")
    items = [ds[i] for i in range(3)]
    batch = PromptCollator(tok)(items)
    lengths = [len(it["prompt_ids"]) for it in items]
    width = max(lengths)
    for row, n in enumerate(lengths):
        assert batch["prompt_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert (batch["prompt_ids"][row, : width - n] == PAD).all()
    assert batch["names"] == [it["name"] for it in items]
    assert batch["labels"] == [it["labels"] for it in items]
    assert batch["response_prefix"] == [FAST_THINKING_PREFIX] * 3
    assert set(batch["media"]) >= {"input_features", "pixel_values_videos"}
    text_only = mer_unibench(tok, _eval_dir(sample_dir, "ovmerd"), modalities=[])
    assert PromptCollator(tok)([text_only[0]])["media"] is None


def _token_nll(logits, labels):
    """Summed next-token NLL over supervised positions."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="sum")


def test_tiny_thinker_runs_on_collated_batches(tok, sample_dir, thinker):
    """The Thinker raises if placeholder counts and media features disagree."""
    sft = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12)
    batch = SFTCollator(tok)([sft[i] for i in range(4)])
    with torch.no_grad():
        out = thinker(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"])
    assert math.isfinite(out.loss.item())
    rl = mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12)
    prompts = PromptCollator(tok)([rl[i] for i in range(3)])
    with torch.no_grad():
        logits = thinker(input_ids=prompts["prompt_ids"], attention_mask=prompts["prompt_mask"], **prompts["media"]).logits
    assert logits.shape[:2] == prompts["prompt_ids"].shape and torch.isfinite(logits).all()
    # A mismatch is caught by the model (what the test above relies on).
    broken = dict(batch)
    broken["pixel_values_videos"] = batch["pixel_values_videos"][4:]
    broken["video_grid_thw"] = batch["video_grid_thw"][1:]
    with pytest.raises(Exception):
        thinker(**{k: v for k, v in broken.items() if k != "labels"})


@pytest.mark.parametrize("use_audio_in_video", [True, False])
def test_mrope_positions_match_the_thinker(tok, sample_dir, thinker, use_audio_in_video):
    sft = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12, use_audio_in_video=use_audio_in_video)
    items = [sft[i] for i in range(len(sft))]
    for item in items:
        media = item["media"]
        assert ("use_audio_in_video" in media) == use_audio_in_video
        expected, _ = thinker.model.get_rope_index(
            item["input_ids"][None],
            None,
            media["video_grid_thw"],
            torch.ones(1, len(item["input_ids"]), dtype=torch.long),
            use_audio_in_video,
            media["feature_attention_mask"].sum(-1),
            media["video_second_per_grid"],
        )
        got = mrope_position_ids(
            item["input_ids"], media["video_grid_thw"], media["video_second_per_grid"],
            video_token_id=tok.convert_tokens_to_ids("<|VIDEO|>"), audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
            vision_start_token_id=tok.convert_tokens_to_ids("<|vision_bos|>"),
            audio_start_token_id=tok.convert_tokens_to_ids("<|audio_bos|>"), use_audio_in_video=use_audio_in_video,
        )  # fmt: skip
        assert torch.equal(got, expected[:, 0])


def test_use_audio_in_video_layouts(tok, sample_dir):
    """On (default): one interleaved block; off: audio block then video block; no effect without audio."""
    on = mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12)[0]["prompt_ids"].tolist()
    off = mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12, use_audio_in_video=False)[0]
    video_only = mer_caption_plus(tok, _caption(sample_dir), "rl", num_sft_samples=12, modalities=["video"])[0]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_bos|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_eos|>")}
    start = on.index(ids["<|vision_bos|>"])
    assert on[start + 1] == ids["<|audio_bos|>"] and on.index(ids["<|vision_eos|>"]) == on.index(ids["<|audio_eos|>"]) + 1
    off_ids = off["prompt_ids"].tolist()
    assert off_ids.index(ids["<|audio_eos|>"]) < off_ids.index(ids["<|vision_bos|>"]) and len(off_ids) == len(on)
    assert sorted(off_ids) == sorted(on) and "use_audio_in_video" not in off["media"]
    assert "use_audio_in_video" not in video_only["media"]


def test_mrope_positions_two_temporal_patches():
    video = 7
    ids = torch.tensor([1, 2, 8] + [video] * 4 + [9, 3])
    grid = torch.tensor([[2, 2, 4]])  # t=2, h=2, w=4 -> 2 * 1 * 2 = 4 tokens
    pos = mrope_position_ids(ids, grid, torch.tensor([0.5]), video_token_id=video, position_id_per_seconds=25)
    # text 0,1,2; video starts at 3: t offsets (0, 12), h 0, w (0, 1); eos at max(15, 3, 4) + 1 = 16
    assert pos[:, :3].tolist() == [[0, 1, 2]] * 3
    assert pos[:, 3:7].tolist() == [[3, 3, 15, 15], [3, 3, 3, 3], [3, 4, 3, 4]]
    assert pos[:, 7:].tolist() == [[16, 17]] * 3


def test_packing_text_only_matches_unpacked(tok, sample_dir):
    from merr1.components.models import tiny_qwen2

    model = tiny_qwen2().eval()
    ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12, modalities=[], system_prompt=None)
    items = [ds[i] for i in range(6)]
    padded = SFTCollator(tok)(items)
    packed = SFTCollator(tok, packed=True, max_packed_tokens=2 * max(len(i["input_ids"]) for i in items))(items)
    assert packed["input_ids"].shape[0] < 6 and "attention_mask" not in packed
    assert packed["position_ids"].shape == packed["input_ids"].shape
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"] != IGNORE_INDEX).sum())
    with torch.no_grad():
        ref = _token_nll(model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits, padded["labels"])
        got = _token_nll(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits, packed["labels"])
        # Documented pitfall: with the default use_cache=True, transformers skips the packed mask.
        leaky = _token_nll(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits, packed["labels"])
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(leaky, ref, rtol=1e-5, atol=1e-4)


def test_packing_thinker_matches_unpacked(tok, sample_dir, thinker):
    ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12, system_prompt=None)
    items = [ds[i] for i in range(6)]
    padded = SFTCollator(tok)(items)
    packed = SFTCollator(tok, packed=True, mrope=True, max_packed_tokens=3 * max(len(i["input_ids"]) for i in items))(items)
    assert packed["input_ids"].shape[0] < 6
    assert packed["position_ids"].shape == (4, *packed["input_ids"].shape)
    with torch.no_grad():
        ref = _token_nll(thinker(**{k: v for k, v in padded.items() if k != "labels"}).logits, padded["labels"])
        got = _token_nll(thinker(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits, packed["labels"])
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_packing_saves_padding(tok, sample_dir):
    ds = mer_caption_plus(tok, _caption(sample_dir), "all", mode="sft", modalities=[], system_prompt=None)
    items = [ds[i] for i in range(len(ds))]
    longest = max(len(i["input_ids"]) for i in items)
    padded = SFTCollator(tok)(items)
    packed = SFTCollator(tok, packed=True, max_packed_tokens=4 * longest)(items)
    num_real = sum(len(i["input_ids"]) for i in items)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert int((packed["input_ids"] != PAD).sum()) == num_real
    assert packed["input_ids"].shape[1] <= 4 * longest
    with pytest.raises(ValueError, match="max_packed_tokens"):
        SFTCollator(tok, packed=True)


def test_packing_media_needs_mrope(tok, sample_dir):
    ds = mer_caption_plus(tok, _caption(sample_dir), "sft", num_sft_samples=12)
    with pytest.raises(ValueError, match="mrope=True"):
        SFTCollator(tok, packed=True, max_packed_tokens=4096)([ds[0], ds[1]])


def test_collators_reject_empty_batches(tok):
    with pytest.raises(ValueError, match="empty"):
        SFTCollator(tok)([])
    with pytest.raises(ValueError, match="empty"):
        PromptCollator(tok)([])


def test_select_media_equals_collating_the_selected_samples():
    from merr1.components.data.collate import collate_media, select_media

    gen = torch.Generator().manual_seed(0)

    def sample(frames, grid):
        t, h, w = grid
        return {
            "input_features": torch.randn(1, 16, frames, generator=gen),
            "feature_attention_mask": torch.ones(1, frames, dtype=torch.long),
            "pixel_values_videos": torch.randn(t * h * w, 8, generator=gen),
            "video_grid_thw": torch.tensor([grid]),
            "video_second_per_grid": torch.tensor([1.0 + frames / 100]),
        }

    samples = [sample(40, (2, 4, 4)), sample(12, (2, 2, 4)), sample(24, (2, 4, 2))]
    batch = collate_media(samples)
    for chosen in ([1], [2, 1], [0, 2], [1, 1, 0]):
        expected = collate_media([samples[i] for i in chosen])
        got = select_media(batch, 3, chosen)
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (chosen, key)
    with pytest.raises(ValueError, match="not a multiple"):
        select_media(batch, 2, [0])
