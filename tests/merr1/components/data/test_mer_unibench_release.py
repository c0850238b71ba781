"""The nine MER-UniBench test sets read as released (issue 18).

The layouts are written by ``write_miniature`` (labels and subtitles only here: no media, no
PyAV) in the released formats; the expected labels below are converted by hand from its table
(``MINIATURE``) with the official rules (docs/mer_unibench.md), and, when pandas is installed,
compared with what the official code's own reading path (pandas.read_csv + np.load(allow_pickle=True),
fine for these trusted generated files) gives.
"""

import csv
import math
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from merr1.components.data import EvalSet, MERUniBenchDataset, mer_unibench_official
from merr1.components.data.mer_unibench_miniature import MINIATURE, miniature_test_names, write_miniature
from merr1.components.data.mer_unibench_release import (
    BENCHMARKS,
    UnsafePickleError,
    media_files,
    official_eval_set,
    read_npz_dict,
    read_test_set,
    spec_for,
    string_to_list,
)
from merr1.components.evaluation import score_mode
from merr1.components.tokenizer import tiny_tokenizer
from merr1.score import score_basic_f1, score_hitrate, score_ovmerd, score_sentiment
from mer_unibench_expected import EXPECTED, EXPECTED_SUBTITLES, TASKS

@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_miniature(tmp_path_factory.mktemp("mini"), with_media=False)


@pytest.fixture
def copy(mini, tmp_path):
    """A writable copy of one set's folder."""

    def make(dataset):
        target = tmp_path / BENCHMARKS[dataset].folder
        shutil.copytree(mini / BENCHMARKS[dataset].folder, target)
        return target

    return make


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _root(mini, dataset):
    return mini / BENCHMARKS[dataset].folder


def _save_npz(path, **splits):
    np.savez_compressed(path, **splits)


def _rewrite_csv(path, edit):
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


# ---------------------------------------------------------------------------------------------
# Labels as the official code reads them


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_every_set_gives_the_hand_converted_labels(mini, dataset):
    rows = read_test_set(dataset, _root(mini, dataset))
    assert [(r.name, r.label) for r in rows] == EXPECTED[dataset]
    assert all(r.problem is None and r.subtitle is not None for r in rows)
    assert [r.name for r in rows] == miniature_test_names(dataset)
    if dataset in EXPECTED_SUBTITLES:
        name, subtitle = EXPECTED_SUBTITLES[dataset]
        assert next(r.subtitle for r in rows if r.name == name) == subtitle
    words = {"basic": lambda label: [label], "sentiment": lambda label: [],
             "ovmerd": lambda label: [w.strip().lower() for w in label.split(",")]}[TASKS[dataset]]  # fmt: skip
    assert [r.words for r in rows] == [words(label) for _, label in EXPECTED[dataset]]


def test_official_order_names_folders_and_sizes():
    assert list(BENCHMARKS) == ["MER2023", "MER2024", "MELD", "IEMOCAPFour", "CMUMOSI", "CMUMOSEI", "SIMS",
                                "SIMSv2", "OVMERDPlus"]  # fmt: skip
    sizes = {k: s.num_test for k, s in BENCHMARKS.items()}
    assert sizes == {"MER2023": 411, "MER2024": 1169, "MELD": 2610, "IEMOCAPFour": 1241, "CMUMOSI": 686,
                     "CMUMOSEI": 4659, "SIMS": 457, "SIMSv2": 1034, "OVMERDPlus": 532}  # fmt: skip
    assert sum(sizes.values()) == 12799
    assert {k: (s.video_dir, s.video_exts, s.audio_dir) for k, s in BENCHMARKS.items()} == {
        "MER2023": ("video", (".mp4", ".avi"), "audio"), "MER2024": ("video", (".mp4", ".avi"), "audio"),
        "MELD": ("subvideo", (".mp4",), "subaudio"), "IEMOCAPFour": ("subvideo-tgt", (".avi",), "subaudio"),
        "CMUMOSI": ("subvideo", (".mp4",), "subaudio"), "CMUMOSEI": ("subvideo_new", (".mp4",), "subaudio"),
        "SIMS": ("video", (".mp4",), "audio"), "SIMSv2": ("video_new", (".mp4",), "audio"),
        "OVMERDPlus": ("video", (".mp4",), "audio"),
    }  # fmt: skip
    assert spec_for("OV-MERD+").id == "OVMERDPlus" and spec_for("MOSEI").id == "CMUMOSEI"
    with pytest.raises(ValueError, match="unknown MER-UniBench data set 'IEMOCAP6'"):
        spec_for("IEMOCAP6")


def _official_string_to_list(value):
    # toolkit/utils/functions.py:608-626 (its `str` argument renamed)
    pd = pytest.importorskip("pandas")
    import re

    if value == "":
        return []
    if pd.isna(value):
        return []
    if value[0] == "[":
        value = value[1:]
    if value[-1] == "]":
        value = value[:-1]
    return [item.strip() for item in re.split("['\",]", value) if item.strip() not in ["", ","]]


def _official_reading(dataset, root):
    """(name, GT, subtitle) as the official class + evaluation.py compute them (pandas, numpy)."""
    pd = pytest.importorskip("pandas")
    spec = BENCHMARKS[dataset]
    name2subtitle = {}
    for _, row in pd.read_csv(root / spec.subtitle_file).iterrows():
        subtitle = row[spec.subtitle_column]
        name2subtitle[row["name"]] = "" if pd.isna(subtitle) else subtitle
    if dataset == "OVMERDPlus":
        name2openset = {}
        for _, row in pd.read_csv(root / "ovlabel.csv").iterrows():
            openset = _official_string_to_list(row["openset"]) or ["neutral"]
            name2openset[row["name"]] = ", ".join(openset)
        names = ["" if pd.isna(v) else v for v in pd.read_csv(root / spec.subtitle_file)["name"]]
        return [(n, name2openset[n], name2subtitle[n]) for n in names]
    corpus = np.load(root / spec.label_file, allow_pickle=True)[spec.split].tolist()  # trusted test file
    if dataset == "IEMOCAPFour":
        names = [n for n in corpus if int(n[4]) - 1 == 4]
        return [(n, spec.idx2emo[corpus[n]["emo"]], name2subtitle[n]) for n in names]
    key = "val" if spec.task == "sentiment" else "emo"
    out = []
    for name in corpus:
        gt = corpus[name][key]
        if spec.task == "basic" and not isinstance(gt, str):
            gt = spec.idx2emo[gt]
        out.append((name, gt, name2subtitle[name]))
    return out


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_same_as_the_official_reading_path(mini, dataset):
    official = _official_reading(dataset, _root(mini, dataset))
    ours = [(r.name, r.label, r.subtitle) for r in read_test_set(dataset, _root(mini, dataset))]
    assert ours == official


# ---------------------------------------------------------------------------------------------
# Bad cases


def test_name_only_in_the_labels_and_label_only_names(mini, copy, tok):
    root = copy("MER2023")
    _rewrite_csv(root / "transcription-engchi-polish.csv", lambda rows: [r for r in rows if r[0] != "sample_00000102"])
    rows = read_test_set("MER2023", root)
    assert [r.name for r in rows if r.subtitle is None] == ["sample_00000102"]
    ds = mer_unibench_official(tok, "MER2023", str(root), modalities=[])
    assert [(b.name, b.kind) for b in ds.bad_rows] == [("sample_00000102", "missing subtitle")]
    assert ds.names == ["sample_00000101", "sample_00000103", "sample_00000104"]
    with pytest.raises(ValueError, match="bad row"):
        mer_unibench_official(tok, "MER2023", str(root), modalities=[], strict=True)

    # OV-MERD+: a subtitle row without an ovlabel row (the official code: KeyError); ovlabel rows
    # that are not subtitle rows are not test samples.
    root = copy("OVMERDPlus")
    _rewrite_csv(root / "ovlabel.csv", lambda rows: [r for r in rows if r[0] != "sample_00000500"])
    rows = read_test_set("OVMERDPlus", root)
    assert [r.name for r in rows] == [n for n, _ in EXPECTED["OVMERDPlus"]]
    assert [(r.name, r.problem.kind) for r in rows if r.problem] == [("sample_00000500", "no label")]


@pytest.mark.parametrize(
    "dataset, entry, kind",
    [
        ("MELD", {"emo": 9, "val": -10}, "unknown label"),  # not an index of the MELD table
        ("MELD", {"val": -10}, "bad label entry"),
        ("IEMOCAPFour", {"emo": "happy", "val": -10}, "unknown label"),  # IEMOCAP maps every label
        ("MER2023", {"emo": 2, "val": 0.0}, "unknown label"),  # MER2023 labels are words
        ("CMUMOSI", {"emo": 0, "val": float("nan")}, "unreadable score"),
        ("CMUMOSI", {"emo": 0, "val": "1.5"}, "unreadable score"),
        ("CMUMOSI", 1.5, "bad label entry"),
    ],
)
def test_unusable_labels_are_bad_rows(copy, dataset, entry, kind):
    root = copy(dataset)
    spec = BENCHMARKS[dataset]
    splits = {key: {n: dict(e) for n, e in entries} for key, entries in MINIATURE[dataset]["splits"].items()}
    first = miniature_test_names(dataset)[0]
    splits[spec.split][first] = entry
    for key, entries in splits.items():
        for n, e in entries.items():  # the "np:" markers of the miniature table as plain values
            if isinstance(e, dict):
                e.update({k: (int(v[3:]) if k == "emo" else float(v[3:])) for k, v in e.items()
                          if isinstance(v, str) and v.startswith("np:")})  # fmt: skip
    _save_npz(root / spec.label_file, **splits)
    rows = read_test_set(dataset, root)
    assert [(r.name, r.problem.kind if r.problem else None) for r in rows][0] == (first, kind)
    assert all(r.problem is None for r in rows[1:])


def test_meld_string_labels_pass_unmapped(copy):
    # evaluation.py:214-221 maps only non-string GT through idx2emo
    root = copy("MELD")
    _save_npz(root / "label.npz", train_corpus={}, val_corpus={}, test_corpus={"test_dia0_utt0": {"emo": "fear"},
                                                                               "test_dia0_utt1": {"emo": 5.0}})
    assert [(r.name, r.label) for r in read_test_set("MELD", root)] == [("test_dia0_utt0", "fear"),
                                                                        ("test_dia0_utt1", "fear")]  # fmt: skip


def test_iemocap_name_without_a_session_digit(copy):
    root = copy("IEMOCAPFour")
    _save_npz(root / "label_4way.npz", whole_corpus={"Ses05F_impro01_F000": {"emo": 0}, "Ses_x": {"emo": 1}})
    with pytest.raises(ValueError, match="'Ses_x' has no session digit"):
        read_test_set("IEMOCAPFour", root)


def test_missing_files_columns_and_keys(copy):
    root = copy("MER2024")
    _rewrite_csv(root / "transcription_merge.csv", lambda rows: [[r[0], r[2]] for r in rows])  # no `chinese`
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['chinese'\]"):
        read_test_set("MER2024", root)
    with pytest.raises(FileNotFoundError, match="MELD: root folder .*nowhere not found .*named meld-process"):
        read_test_set("MELD", root.parent / "nowhere")
    root = copy("MELD")
    (root / "label.npz").unlink()
    with pytest.raises(FileNotFoundError, match="meld-process/label.npz"):
        read_test_set("MELD", root)
    root = copy("SIMS")
    _save_npz(root / "label.npz", train_corpus={}, test1_corpus={})
    with pytest.raises(ValueError, match=r"has no key 'test_corpus'; its keys are \['train_corpus', 'test1_corpus'\]"):
        read_test_set("SIMS", root)
    _save_npz(root / "label.npz", test_corpus=["video_0003_0006", "video_0012_0003"])  # names, not a dict
    with pytest.raises(ValueError, match=r"label.npz \[test_corpus\] holds a '<U15' array of shape \(2,\), not a pickled dict"):
        read_test_set("SIMS", root)


def test_miniature_keeps_the_release_quirks(mini):
    sims = [r.name for r in read_test_set("SIMS", _root(mini, "SIMS"))]
    simsv2 = [r.name for r in read_test_set("SIMSv2", _root(mini, "SIMSv2"))]
    assert set(sims) < set(simsv2)  # every SIMS test name is a SIMSv2 test name
    mosei = [r.name for r in read_test_set("CMUMOSEI", _root(mini, "CMUMOSEI"))]
    assert {n[:2] for n in mosei} >= {"-M", "--", "_q"} and "24351_0" in mosei
    with np.load(_root(mini, "MER2023") / "label-6way.npz", allow_pickle=False) as npz:  # no pickle needed to list
        assert sorted(npz.files) == ["test1_corpus", "test2_corpus", "test3_corpus", "train_corpus"]


def test_subtitle_cells_pandas_reads_as_nan_are_empty(copy):
    root = copy("MELD")
    cells = {"test_dia0_utt0": "NA", "test_dia0_utt1": "None", "test_dia17_utt4": "null", "test_dia100_utt2": " NA"}

    def edit(rows):
        return [[r[0], r[1], cells.get(r[0], r[2])] for r in rows]

    _rewrite_csv(root / "transcription-engchi-polish.csv", edit)
    subtitles = {r.name: r.subtitle for r in read_test_set("MELD", root)}
    assert subtitles["test_dia0_utt0"] == subtitles["test_dia0_utt1"] == subtitles["test_dia17_utt4"] == ""
    assert subtitles["test_dia100_utt2"] == " NA"  # pandas compares the raw cell


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("['Happy', 'Excited']", ["Happy", "Excited"]),
        ("[worried, sad, nervous]", ["worried", "sad", "nervous"]),
        ('["a", "b"]', ["a", "b"]),
        ("[]", []),
        ("", []),
        ("NA", []),  # pandas NaN
        (None, []),
        (float("nan"), []),
        ("happy", ["happy"]),
        (" [x]", ["[x"]),  # no strip before the bracket check, as the official code
        ("[", []),  # deviation: the official code raises IndexError
        ("[a,,b]", ["a", "b"]),
    ],
)
def test_string_to_list(cell, expected):
    assert string_to_list(cell) == expected


# ---------------------------------------------------------------------------------------------
# Label .npz files: restricted unpickling


def test_npz_dicts_with_numpy_scalars_and_protocol_2(tmp_path):
    path = tmp_path / "label.npz"
    np.savez_compressed(path, test_corpus={np.str_("a"): {"emo": np.int64(3), "val": np.float32(0.5)},
                                           "b": {"emo": 1, "val": -10}})  # fmt: skip
    value = read_npz_dict(path, "test_corpus")
    assert value == {"a": {"emo": 3, "val": 0.5}, "b": {"emo": 1, "val": -10}}
    assert [type(k) for k in value] == [str, str] and type(value["a"]["emo"]) is int
    # numpy 1.x wrote pickle protocol 3, Python 2-era tools protocol 2 (bytes as _codecs.encode)
    for protocol in (2, 3):
        array = np.empty((), dtype=object)
        array[()] = {"x": {"val": np.float64(-1.25)}}
        _write_npy_member(tmp_path / f"p{protocol}.npz", "test_corpus", pickle.dumps(array, protocol=protocol))
        assert read_npz_dict(tmp_path / f"p{protocol}.npz", "test_corpus") == {"x": {"val": -1.25}}


def _write_npy_member(path, key, pickled, descr="|O", shape=()):
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + pickled
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{key}.npy", data)


class _Exploit:
    """A pickle payload that would create a file when unpickled without restriction."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (shutil.copyfile, (__file__, str(self.target)))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused(tmp_path, protocol):
    target = tmp_path / "pwned"
    array = np.empty((), dtype=object)
    array[()] = {"sample_00000101": {"emo": _Exploit(target)}}
    _write_npy_member(tmp_path / "label.npz", "test1_corpus", pickle.dumps(array, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle shutil\.copyfile"):
        read_npz_dict(tmp_path / "label.npz", "test1_corpus")
    assert not target.exists()
    # also through a whole set read
    root = tmp_path / "mer2023"
    root.mkdir()
    shutil.copy(tmp_path / "label.npz", root / "label-6way.npz")
    (root / "transcription-engchi-polish.csv").write_text("name,chinese,english\nsample_00000101,,hi\n")
    with pytest.raises(UnsafePickleError):
        read_test_set("MER2023", root)
    assert not target.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"cos\nsystem\n(S'echo x'\ntR.", "refusing to unpickle os.system"),  # protocol 0 GLOBAL
        (pickle.dumps(eval), "refusing to unpickle builtins.eval"),
        (b"c_codecs\nencode\n(S'abc'\nS'rot13'\ntR.", "only latin1"),
        (b"\x80\x02}q\x00.", "holds a dict of shape None, not a pickled dict"),  # a dict not inside an array
        (b"\x80\x02", "unreadable pickle"),
    ],
)
def test_refused_and_unreadable_payloads(tmp_path, payload, message):
    _write_npy_member(tmp_path / "x.npz", "test_corpus", payload)
    with pytest.raises(ValueError, match=message):
        read_npz_dict(tmp_path / "x.npz", "test_corpus")


def test_non_dict_npz_members(tmp_path):
    path = tmp_path / "label.npz"
    np.savez_compressed(path, numbers=np.arange(3), names=np.array(["a", "b"]),
                        listed=np.array([{"a": 1}, {"b": 2}], dtype=object), one_list=np.array(None, dtype=object))  # fmt: skip
    with pytest.raises(ValueError, match=r"\[numbers\] holds a '<i8' array of shape \(3,\), not a pickled dict"):
        read_npz_dict(path, "numbers")
    with pytest.raises(ValueError, match=r"\[names\] holds a '<U1' array"):
        read_npz_dict(path, "names")
    with pytest.raises(ValueError, match=r"\[listed\] holds a ndarray of shape \(2,\), not a pickled dict"):
        read_npz_dict(path, "listed")
    with pytest.raises(ValueError, match=r"\[one_list\] holds a NoneType, not a dict of samples"):
        read_npz_dict(path, "one_list")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not an .npz file"):
        read_npz_dict(tmp_path / "bad.npz", "test_corpus")
    with pytest.raises(FileNotFoundError):
        read_npz_dict(tmp_path / "none.npz", "test_corpus")


# ---------------------------------------------------------------------------------------------
# Media paths and the YAML builder


def test_media_paths_follow_the_official_rules(tmp_path):
    root = tmp_path / "mer2023"
    (root / "video").mkdir(parents=True)
    (root / "video" / "a.avi").write_bytes(b"")
    (root / "video" / "b.mp4").write_bytes(b"")
    (root / "video" / "b.avi").write_bytes(b"")
    assert media_files("MER2023", root, "a") == (root / "audio" / "a.wav", root / "video" / "a.avi")
    assert media_files("MER2023", root, "b") == (root / "audio" / "b.wav", root / "video" / "b.mp4")  # .mp4 first
    assert media_files("MER2023", root, "c") == (root / "audio" / "c.wav", None)
    root = tmp_path / "iemocap"
    (root / "subvideo-tgt").mkdir(parents=True)
    (root / "subvideo-tgt" / "Ses05F_impro01_F000.avi").write_bytes(b"")
    (root / "subvideo-tgt" / "Ses05F_impro01_F001.mp4").write_bytes(b"")  # IEMOCAP reads .avi only
    assert media_files("IEMOCAPFour", root, "Ses05F_impro01_F000")[1] == root / "subvideo-tgt" / "Ses05F_impro01_F000.avi"
    assert media_files("IEMOCAPFour", root, "Ses05F_impro01_F001")[1] is None
    root = tmp_path / "mosei"
    (root / "subvideo_new").mkdir(parents=True)
    (root / "subvideo_new" / "--qXJuDtHPw_5.mp4").write_bytes(b"")
    assert media_files("CMUMOSEI", root, "--qXJuDtHPw_5") == (root / "subaudio" / "--qXJuDtHPw_5.wav",
                                                             root / "subvideo_new" / "--qXJuDtHPw_5.mp4")  # fmt: skip


def test_builder_text_only_and_missing_media_cache(mini, tok):
    ds = mer_unibench_official(tok, "OVMERDPlus", str(_root(mini, "OVMERDPlus")), "fast", modalities=[])
    assert (ds.name, ds.task, ds.benchmark, ds.mode) == ("OV-MERD+", "ovmerd", "OVMERDPlus", "fast")
    assert [(r.name, r.label) for r in ds.records] == EXPECTED["OVMERDPlus"]
    assert ds[0]["labels"] == ["happy", "excited"] and ds[0]["label"] == "Happy, Excited"
    named = mer_unibench_official(tok, "MOSI", str(_root(mini, "CMUMOSI")), name="mosi_test", modalities=[])
    assert (named.name, named.benchmark, named.task) == ("mosi_test", "CMUMOSI", "sentiment")
    with pytest.raises(ValueError, match=r"no media cache at .*media_cache; decode the media first: python "
                                         r"scripts/prepare_mer_unibench.py"):  # fmt: skip
        mer_unibench_official(tok, "MELD", str(_root(mini, "MELD")))
    eval_set = official_eval_set("SIMS", _root(mini, "SIMS"), media_dir="/elsewhere")
    assert isinstance(eval_set, EvalSet) and str(eval_set.media_dir) == "/elsewhere"
    assert len(MERUniBenchDataset(tok, eval_set, modalities=[])) == 4


def _answers(dataset):
    """Deterministic predictions: the GT word for every other basic/ovmerd sample, another word
    otherwise; sentiments: the GT sign for every other sentiment sample, flipped otherwise."""
    out = {}
    for i, (name, label) in enumerate(EXPECTED[dataset]):
        if TASKS[dataset] == "sentiment":
            sign = "positive" if label > 0 else "negative"
            out[name] = sign if i % 2 == 0 else {"positive": "negative", "negative": "positive"}[sign]
        else:
            out[name] = label if i % 2 == 0 else "sad, calm"
    return out


def _same(a, b):
    """Exactly equal, or both NaN (a wheel with P = R = 0 is NaN in the official protocol)."""
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_scores_equal_merr1_score_on_hand_converted_labels(mini, tok, dataset):
    ds = mer_unibench_official(tok, dataset, str(_root(mini, dataset)), modalities=[])
    labels = {r.name: r.label for r in ds.records}
    answers = _answers(dataset)
    hand = dict(EXPECTED[dataset])
    if ds.task == "sentiment":
        got = score_mode("sentiment", labels, {n: "" for n in labels}, answers)
        want = score_sentiment(answers, hand)
        assert (got["waf"], got["accuracy"], got["num_nonzero"]) == (want["waf"], want["accuracy"], want["n_nonzero"])
        assert want["n_nonzero"] == sum(v != 0 for v in hand.values()) < len(hand)  # zeros dropped
    elif ds.task == "basic":
        got = score_mode("basic", labels, answers)
        assert _same(got["hit_rate"], score_hitrate(answers, hand)["hit_rate"])
        assert _same(got["f1"], score_basic_f1(answers, hand)["f1"])
    else:
        got = score_mode("ovmerd", labels, answers)
        want = score_ovmerd(answers, hand)
        assert all(_same(got[k], want[k]) for k in ("f1", "precision", "recall"))


def test_npz_member_reader_ignores_trailing_zip_members(tmp_path):
    """An npz may hold members that are not .npy arrays; only the asked key is read."""
    path = tmp_path / "label.npz"
    np.savez_compressed(path, test_corpus={"a": {"val": 1.0}})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("README.txt", "not an array")
    assert read_npz_dict(path, "test_corpus") == {"a": {"val": 1.0}}


# ---------------------------------------------------------------------------------------------
# MER-Caption+ as released (MER2025: track2/track3 CSVs, subtitle_chieng.csv, video/, audio/)


def test_mer_caption_plus_as_released(mini, tok):
    from merr1.components.data import MERCaptionPlusDataset
    from merr1.components.data.mer_unibench_miniature import CAPTION_FOLDER

    folder = mini / CAPTION_FOLDER
    rl = MERCaptionPlusDataset(tok, folder, "all", mode="rl", modalities=[])
    # every track2 name in file order; an empty list is neutral ([]); words lower-cased
    assert [(r.name, r.words) for r in rl.records] == [
        ("sample_00001001", ["happy", "excited"]), ("samplenew3_00000077", ["worried"]),
        ("samplenew4_00000300", []), ("sample_00001002", ["angry", "annoyed"]),
    ]  # fmt: skip
    assert rl.bad_rows == []
    prompt = tok.decode(rl[0]["prompt_ids"])
    assert "We are going on a trip tomorrow!" in prompt and "我们明天去旅行" not in prompt  # the `english` column
    sft = MERCaptionPlusDataset(tok, folder, "all", mode="sft", modalities=[])
    assert "his voice trembles" in tok.decode(sft[1]["input_ids"])  # track3's reason


def test_prepare_media_decodes_only_the_track2_names(tmp_path):
    import importlib.util
    import sys

    from merr1.components.data.mer_unibench_miniature import CAPTION_FOLDER, MINIATURE_CAPTION

    spec = importlib.util.spec_from_file_location("prepare_media", Path(__file__).resolve().parents[4] / "scripts"
                                                  / "prepare_media.py")  # fmt: skip
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    folder = write_miniature(tmp_path / "mini", with_video=False) / CAPTION_FOLDER
    args = ["--data_dir", str(folder), "--tiny", "--modalities", "audio", "--out"]
    assert script.main([*args, str(tmp_path / "track2")]) == 0
    track2 = sorted(name for name, _ in MINIATURE_CAPTION["track2"])
    assert sorted(p.stem for p in (tmp_path / "track2").glob("*.safetensors")) == track2
    assert script.main([*args, str(tmp_path / "all"), "--all_files"]) == 0
    assert sorted(p.stem for p in (tmp_path / "all").glob("*.safetensors")) == sorted(track2 + MINIATURE_CAPTION["extra_clips"])


def test_only_the_test_split_is_needed(copy):
    """The official constructors also load train_corpus and need a subtitle for every training
    name; evaluation does not (a documented deviation)."""
    root = copy("MER2023")
    _save_npz(root / "label-6way.npz", test1_corpus={"sample_00000101": {"emo": "worried", "val": -1.0}})
    _rewrite_csv(root / "transcription-engchi-polish.csv", lambda rows: [r for r in rows if r[0] != "sample_00000003"])
    assert [(r.name, r.label) for r in read_test_set("MER2023", root)] == [("sample_00000101", "worried")]
