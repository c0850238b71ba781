import csv
import hashlib
import json

import pytest

from merr1.components.data import parse_openset, split_sft_rl
from merr1.components.data.sample import (
    BASIC_LABELS,
    SAMPLE_EMOTIONS,
    SAMPLE_INFO,
    ensure_sample_data,
    make_sample_data,
    sample_corpus,
)

WORD_TO_CONCEPT = {w: c for c, words in SAMPLE_EMOTIONS.items() for w in words}


def _digest(root):
    """sha256 of every file under root (relative path -> hash)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def text_sample(tmp_path_factory):
    """The default-sized sample set, text only (fast)."""
    root = tmp_path_factory.mktemp("text_sample")
    info = make_sample_data(root, seed=0, with_media=False)
    return root, info


def test_same_seed_same_bytes(tmp_path):
    a = make_sample_data(tmp_path / "a", seed=7, num_train=40, num_sft_samples=10, num_eval=6)
    b = make_sample_data(tmp_path / "b", seed=7, num_train=40, num_sft_samples=10, num_eval=6)
    assert a == b
    digest_a = _digest(tmp_path / "a")
    assert digest_a == _digest(tmp_path / "b")
    assert sum(name.endswith(".safetensors") for name in digest_a) == 40 + 3 * 6
    make_sample_data(tmp_path / "c", seed=8, num_train=40, num_sft_samples=10, num_eval=6)
    assert _digest(tmp_path / "c") != digest_a


def test_layout_and_info(text_sample):
    root, info = text_sample
    assert json.loads((root / SAMPLE_INFO).read_text()) == info
    assert info["num_train"] == 2600 and info["num_sft_samples"] == 600 and info["partition_seed"] == 0
    caption = root / info["mer_caption_plus_dir"]
    assert [r["name"] for r in _csv(caption / "track2_train_mercaptionplus.csv")] == [f"sample_{i:05d}" for i in range(2600)]
    assert list(_csv(caption / "subtitle_chieng.csv")[0]) == ["name", "chinese", "english"]
    for name, folder in info["eval_sets"].items():
        assert len(_csv(root / folder / "labels.csv")) == 100
        assert len(_csv(root / folder / "subtitle.csv")) == 100


def test_labels_use_the_embedded_words_only(text_sample):
    root, info = text_sample
    caption = root / info["mer_caption_plus_dir"]
    for row in _csv(caption / "track2_train_mercaptionplus.csv") + _csv(root / "eval/ovmerd/labels.csv"):
        words = parse_openset(row["openset"])
        assert 1 <= len(words) <= 4
        assert all(w in WORD_TO_CONCEPT for w in words)
    assert {r["label"] for r in _csv(root / "eval/basic/labels.csv")} == set(BASIC_LABELS.values())


def test_sft_labels_under_cover_and_rl_labels_are_full(text_sample):
    root, info = text_sample
    caption = root / info["mer_caption_plus_dir"]
    listed = {r["name"]: parse_openset(r["openset"]) for r in _csv(caption / "track2_train_mercaptionplus.csv")}
    full = {r["name"]: parse_openset(r["openset"]) for r in _csv(caption / "full_openset.csv")}
    reasons = {r["name"]: r["reason"] for r in _csv(caption / "track3_train_mercaptionplus.csv")}
    sft, rl = split_sft_rl(listed, info["num_sft_samples"], info["partition_seed"])
    assert all(listed[n] == full[n] for n in rl)
    multi = [n for n in sft if len(full[n]) > 1]
    only_one = [n for n in multi if len(set(listed[n]) & set(full[n])) == 1]
    wrong = [n for n in sft if set(listed[n]) - set(full[n])]
    assert 0.5 < len(only_one) / len(multi) < 0.7  # 60% by design
    assert 0.06 < len(wrong) / len(sft) < 0.14  # 10% by design
    for n in sft:
        # the listed emotions are named in the reasoning
        assert all(w in reasons[n] for w in listed[n])
    sizes = [len(full[n]) for n in full]
    assert 0.35 < sizes.count(1) / len(sizes) < 0.45 and 0.15 < sizes.count(3) / len(sizes) < 0.25
    stats = info["stats"]
    assert stats["rl"]["label_recall"] == 1.0 and stats["rl"]["num_wrong_extra"] == 0
    assert 0.7 < stats["sft"]["label_recall"] < 0.9


def test_subtitle_carries_the_signal(text_sample):
    """Each GT concept contributes exactly one cue sentence; sentiment scores follow valence."""
    root, info = text_sample
    caption = root / info["mer_caption_plus_dir"]
    subtitles = {r["name"]: r["english"] for r in _csv(caption / "subtitle_chieng.csv")}
    full = {r["name"]: parse_openset(r["openset"]) for r in _csv(caption / "full_openset.csv")}
    for name in list(full)[:200]:
        num_sentences = sum(subtitles[name].count(c) for c in ".!?")
        assert num_sentences >= len(full[name])
    scores = [float(r["score"]) for r in _csv(root / "eval/sentiment/labels.csv")]
    assert any(s == 0 for s in scores) and any(s > 0 for s in scores) and any(s < 0 for s in scores)
    assert all(s == 0 or 0.5 <= abs(s) <= 3.0 for s in scores)


def test_words_map_cleanly_onto_every_wheel():
    """Every concept's words map to one category per wheel, distinct across concepts (runs once the
    emotion-wheel component is available)."""
    wheel = pytest.importorskip("merr1.components.emotion_wheel")
    wheels = wheel.EmotionWheels.load()
    per_concept = {}
    for concept, words in SAMPLE_EMOTIONS.items():
        mapped = {wheels.map_word(w) for w in words}
        assert len(mapped) == 1, (concept, mapped)
        (categories,) = mapped
        assert all(c is not None for c in categories), (concept, categories)
        per_concept[concept] = categories
    for k in range(5):
        assert len({cats[k] for cats in per_concept.values()}) == len(SAMPLE_EMOTIONS)


def test_ensure_sample_data(tmp_path, caplog):
    import logging

    target = tmp_path / "sample"
    with caplog.at_level(logging.INFO):
        info = ensure_sample_data(target, num_train=30, num_sft_samples=5, num_eval=4, with_media=False)
    assert any("generating the sample data set" in r.message for r in caplog.records)
    assert (target / SAMPLE_INFO).is_file() and not list(tmp_path.glob(".sample.tmp*"))
    before = _digest(target)
    assert ensure_sample_data(target) == info  # present: nothing regenerated
    assert _digest(target) == before
    # A set from an older generator version is replaced.
    old = json.loads((target / SAMPLE_INFO).read_text())
    (target / SAMPLE_INFO).write_text(json.dumps({**old, "generator_version": 0}))
    (target / "stale_marker").write_text("x")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert ensure_sample_data(target, num_train=30, num_sft_samples=5, num_eval=4, with_media=False) == info
    assert any("regenerating" in r.message for r in caplog.records)
    assert not (target / "stale_marker").exists() and _digest(target) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a complete sample set"):
        ensure_sample_data(other)


def test_sample_corpus(tmp_path):
    make_sample_data(tmp_path, num_train=30, num_sft_samples=5, num_eval=4, with_media=False)
    texts = sample_corpus(tmp_path)
    assert any("<think>" in t and "</answer>" in t for t in texts)
    assert any("<step1>" in t for t in texts) and any("\\boxed{" in t for t in texts)
    assert sum(1 for t in texts if t.endswith(("!", ".", "?"))) >= 30
