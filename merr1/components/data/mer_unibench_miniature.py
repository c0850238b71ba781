"""A miniature of MER-UniBench and MER-Caption+ in their released layouts (tests, debug config).

``write_miniature(root)`` writes, under ``root``, the nine official test-set folders and the
MER2025 folder of MER-Caption+ exactly as released (file names, npz keys and per-sample dicts,
integer labels, CSV columns, media folder names and extensions; see
``merr1.components.data.mer_unibench_release`` and docs/mer_unibench.md), with a handful of samples each:

- label ``.npz`` files written with ``np.savez_compressed(..., train_corpus=dict, ...)`` as the
  official preprocessing does, every split key present (the test split plus train/val/test2/...),
  values mixing Python and numpy scalars (``np.str_`` names, ``np.int64`` and ``np.float32``
  labels) as files written from numpy arrays have them;
- the quirks of the real sets: MER2023/MER2024 clips in ``.avi`` when there is no ``.mp4``;
  MER2024 ``samplenew_`` names and a ``chinese`` subtitle column that differs from ``english``;
  MELD integer labels and its known-bad last clip ``test_dia279_utt15``; IEMOCAP's
  ``whole_corpus`` with Sessions 1-5 interleaved (Session 5 is the test set) and ``.avi`` clips
  in ``subvideo-tgt/``; CMU-MOSEI names with leading ``-``, ``--`` and ``_`` and an all-digit id;
  MOSI ids with ``-`` and ``_``; sentiment values of exactly 0 (the metric drops them); every SIMS
  test name also in SIMSv2; OV-MERD+ labels in two list spellings, an empty list (neutral) and a
  label-only name; an empty subtitle cell;
- media: a 16 kHz mono ``.wav`` per test sample (stdlib) and a tiny video (8 frames of 32x32 at
  4 fps, MPEG-4 Part 2, written with PyAV: the ``media`` extra) per test sample.

The content is a fixed table (``MINIATURE``): tests derive the expected labels by hand from it.
Deterministic: the same call writes the same labels, subtitles and media.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from merr1.components.data.media import write_wav
from merr1.components.data.mer_unibench_release import BENCHMARKS

__all__ = ["CAPTION_FOLDER", "MINIATURE", "MINIATURE_CAPTION", "miniature_test_names", "write_miniature"]

CAPTION_FOLDER = "mer2025-dataset"


def _npz_set(splits: dict[str, list[tuple[str, dict[str, Any]]]], subtitles: Sequence[tuple[str, str, str]],
             test: str) -> dict[str, Any]:  # fmt: skip
    return {"splits": splits, "subtitles": list(subtitles), "test": test}


# Per official id: the npz splits (name, per-sample dict) in stored order, the subtitle rows
# (name, chinese, english) and the test split key. Labels use the official value types; "np:"
# markers are turned into numpy scalars when written (see _numpy_values).
MINIATURE: dict[str, dict[str, Any]] = {
    "MER2023": _npz_set(
        {
            "train_corpus": [("sample_00000003", {"emo": "happy", "val": 2.0}),
                             ("sample_00000017", {"emo": "sad", "val": -1.5})],
            "test1_corpus": [("sample_00000101", {"emo": "worried", "val": -1.0}),
                             ("sample_00000102", {"emo": "happy", "val": 3.5}),
                             ("sample_00000103", {"emo": "neutral", "val": 0.0}),
                             ("sample_00000104", {"emo": "angry", "val": -3.0})],
            "test2_corpus": [("sample_00000201", {"emo": "surprise", "val": 1.0})],
            "test3_corpus": [("sample_00000301", {"emo": "sad", "val": -10})],
        },
        [("sample_00000003", "我赢了", "I won the match!"),
         ("sample_00000017", "他走了", "He left me."),
         ("sample_00000101", "明天怎么办", "What will happen tomorrow, I cannot sleep."),
         ("sample_00000102", "太好了", "This is wonderful, we did it!"),
         ("sample_00000103", "我在家", "I am at home now."),
         ("sample_00000104", "你又迟到了", "You are late again, this is unacceptable!"),
         ("sample_00000201", "真的吗", "Really? I did not expect that."),
         ("sample_00000301", "算了", "Forget it.")],
        "test1_corpus",
    ),
    "MER2024": _npz_set(
        {
            "train_corpus": [("sample_00000005", {"emo": "happy"})],
            "test1_corpus": [("sample_00000066", {"emo": "sad"}),
                             ("samplenew_00000007", {"emo": "surprise"}),
                             ("samplenew_00012345", {"emo": "worried"}),
                             ("samplenew_00000400", {"emo": "neutral"})],
            "test2_corpus": [("samplenew_00099999", {"emo": "angry"})],
        },
        [("sample_00000005", "真开心", "So happy."),
         ("sample_00000066", "我好难过", "I am so sad."),
         ("samplenew_00000007", "什么？竟然是你", "What? It is you!"),
         ("samplenew_00012345", "我担心他", "I am worried about him."),
         ("samplenew_00000400", "今天星期一", "Today is Monday."),
         ("samplenew_00099999", "滚出去", "Get out!")],
        "test1_corpus",
    ),
    "MELD": _npz_set(
        {
            "train_corpus": [("train_dia0_utt0", {"emo": 3, "val": -10}),
                             ("train_dia125_utt3", {"emo": 1, "val": -10})],
            "val_corpus": [("val_dia0_utt0", {"emo": 0, "val": -10})],
            "test_corpus": [("test_dia0_utt0", {"emo": 3, "val": -10}),
                            ("test_dia0_utt1", {"emo": 1, "val": -10}),
                            ("test_dia17_utt4", {"emo": "np:0", "val": -10}),
                            ("test_dia100_utt2", {"emo": 6, "val": -10}),
                            ("test_dia279_utt15", {"emo": "np:2", "val": -10})],
        },
        [("train_dia0_utt0", "", "Also I was the point person on my company's transition."),
         ("train_dia125_utt3", "", "Oh my God, that is great!"),
         ("val_dia0_utt0", "", "Why do all your coffee mugs have numbers on the bottom?"),
         ("test_dia0_utt0", "", "Why do all you're coffee mugs have numbers on the bottom?"),
         ("test_dia0_utt1", "", "Oh. That's so Monica can keep track. That way if one of them is missing."),
         ("test_dia17_utt4", "", "You stole my sandwich! Give it back!"),
         ("test_dia100_utt2", "", "Whoa! You're getting married?"),
         ("test_dia279_utt15", "", "I just miss her so much.")],
        "test_corpus",
    ),
    "IEMOCAPFour": _npz_set(
        {
            "whole_corpus": [("Ses01F_impro01_F000", {"emo": 0, "val": -10}),
                             ("Ses02M_script01_1_M003", {"emo": 1, "val": -10}),
                             ("Ses05F_impro01_F000", {"emo": 3, "val": -10}),
                             ("Ses03F_impro02_M010", {"emo": 2, "val": -10}),
                             ("Ses05M_script03_2_M045", {"emo": 0, "val": -10}),
                             ("Ses04M_impro05_F012", {"emo": 3, "val": -10}),
                             ("Ses05F_script02_1a_F010", {"emo": 1, "val": -10}),
                             ("Ses05M_impro07_M021", {"emo": "np:2", "val": -10})],
        },
        [("Ses01F_impro01_F000", "", "That's great, congratulations!"),
         ("Ses02M_script01_1_M003", "", "I miss him every day."),
         ("Ses05F_impro01_F000", "", "I have been waiting in this line for two hours!"),
         ("Ses03F_impro02_M010", "", "Okay. Sure."),
         ("Ses05M_script03_2_M045", "", "We're going to Hawaii, can you believe it?"),
         ("Ses04M_impro05_F012", "", "Don't you dare talk to me like that."),
         ("Ses05F_script02_1a_F010", "", "He's not coming back, is he?"),
         ("Ses05M_impro07_M021", "", "I'll check the schedule and let you know.")],
        "whole_corpus",
    ),
    "CMUMOSI": _npz_set(
        {
            "train_corpus": [("03bSnISJMiM_1", {"emo": 0, "val": 2.4})],
            "val_corpus": [("0h-zjBukYpk_2", {"emo": 0, "val": -0.6})],
            "test_corpus": [("k5Y_838nuGo_1", {"emo": 0, "val": 1.4}),
                            ("yDtzw_Y-7RU_1", {"emo": 0, "val": -2.2}),
                            ("1DmNV9C1hbY_3", {"emo": 0, "val": 0.0}),
                            ("_dI--eQ6qVU_12", {"emo": 0, "val": "np:0.8"})],
        },
        [("03bSnISJMiM_1", "", "I loved this movie."),
         ("0h-zjBukYpk_2", "", "It was kind of boring."),
         ("k5Y_838nuGo_1", "", "The acting was really good."),
         ("yDtzw_Y-7RU_1", "", "Honestly the worst film I have seen this year."),
         ("1DmNV9C1hbY_3", "", "It is a movie about a family."),
         ("_dI--eQ6qVU_12", "", "")],
        "test_corpus",
    ),
    "CMUMOSEI": _npz_set(
        {
            "train_corpus": [("zx4W0Vuus-I_0", {"emo": 0, "val": 1.0})],
            "val_corpus": [("--YBTkFfwTQ_2", {"emo": 0, "val": -1.0})],
            "test_corpus": [("-MeTTeMJBNc_0", {"emo": 0, "val": -1.3333333333333333}),
                            ("tO68uTk-T_E_1", {"emo": 0, "val": 0.6666666666666666}),
                            ("YsMM_1R1vtw_0", {"emo": 0, "val": 2.0}),
                            ("24351_0", {"emo": 0, "val": 0.0}),
                            ("--qXJuDtHPw_5", {"emo": 0, "val": "np:-0.3333"}),
                            ("_q7DM8WkzAQ_3", {"emo": 0, "val": 1.6666666666666667})],
        },
        [("zx4W0Vuus-I_0", "", "I think it is a good policy."),
         ("--YBTkFfwTQ_2", "", "That did not work out."),
         ("-MeTTeMJBNc_0", "", "I was really disappointed by the service."),
         ("tO68uTk-T_E_1", "", "It was okay, I guess, kind of fun."),
         ("YsMM_1R1vtw_0", "", "Best purchase I ever made, I love it!"),
         ("24351_0", "", "The product arrived on Tuesday."),
         ("--qXJuDtHPw_5", "", "Not really what I wanted."),
         ("_q7DM8WkzAQ_3", "", "I would recommend it to my friends.")],
        "test_corpus",
    ),
    "SIMS": _npz_set(
        {
            "train_corpus": [("video_0001_0001", {"emo": 0, "val": 0.8})],
            "val_corpus": [("video_0002_0004", {"emo": 0, "val": -0.4})],
            "test_corpus": [("video_0003_0006", {"emo": 0, "val": -0.8}),
                            ("video_0012_0003", {"emo": 0, "val": 0.6}),
                            ("video_0020_0011", {"emo": 0, "val": 0.0}),
                            ("video_0031_0002", {"emo": 0, "val": -0.2})],
        },
        [("video_0001_0001", "太好了", "That's great."),
         ("video_0002_0004", "不太行", "Not so good."),
         ("video_0003_0006", "我受够了", "I have had enough of this."),
         ("video_0012_0003", "谢谢你", "Thank you so much."),
         ("video_0020_0011", "我们走吧", "Let's go."),
         ("video_0031_0002", "有点累", "I am a bit tired.")],
        "test_corpus",
    ),
    "SIMSv2": _npz_set(
        {
            "train_corpus": [("aqgy3_0001_00001", {"emo": 0, "val": 0.4})],
            "val_corpus": [("video_0002_0004", {"emo": 0, "val": -0.4})],
            "test_corpus": [("video_0003_0006", {"emo": 0, "val": -0.8}),
                            ("aqgy4_0008_00012_1", {"emo": 0, "val": -0.6}),
                            ("video_0012_0003", {"emo": 0, "val": 0.6}),
                            ("test12_00034", {"emo": 0, "val": 1.0}),
                            ("video_0020_0011", {"emo": 0, "val": 0.0}),
                            ("csbgs2_0005_00077", {"emo": 0, "val": -1.0}),
                            ("video_0031_0002", {"emo": 0, "val": -0.2}),
                            ("video_xjzw_00003", {"emo": 0, "val": 0.2})],
        },
        [("aqgy3_0001_00001", "还行", "It's fine."),
         ("video_0002_0004", "不太行", "Not so good."),
         ("video_0003_0006", "我受够了", "I have had enough of this."),
         ("aqgy4_0008_00012_1", "别烦我", "Leave me alone."),
         ("video_0012_0003", "谢谢你", "Thank you so much."),
         ("test12_00034", "我们赢了", "We won!"),
         ("video_0020_0011", "我们走吧", "Let's go."),
         ("csbgs2_0005_00077", "太可怕了", "That's terrible."),
         ("video_0031_0002", "有点累", "I am a bit tired."),
         ("video_xjzw_00003", "挺好的", "Pretty good.")],
        "test_corpus",
    ),
    "OVMERDPlus": {
        # subtitle_eng.csv (name, sentence): its rows ARE the test set, in this order
        "subtitles": [("sample_00000011", "We finally got the tickets, let's go!"),
                      ("samplenew3_00000002", "What if the results are bad? I can't stop thinking about it."),
                      ("sample_00000500", "The meeting is at ten."),
                      ("samplenew3_00000042", "Who took my bike again?")],
        # ovlabel.csv (name, openset): another order, two list spellings, an empty list, a name
        # that is not in the subtitles (ignored by the official code)
        "ovlabel": [("samplenew3_00000042", "['angry']"),
                    ("sample_00099999", "['sad']"),
                    ("sample_00000011", "['Happy', 'Excited']"),
                    ("sample_00000500", "[]"),
                    ("samplenew3_00000002", "[worried, sad, nervous]")],
    },
}  # fmt: skip

# MER-Caption+ (MER2025 release): track2 (name, openset), track3 (name, reason), subtitles
# (name, chinese, english); video/ also holds a clip that is not in track2 (the real video/ folder
# has 132,171 clips for ~31k MER-Caption+ names).
MINIATURE_CAPTION: dict[str, Any] = {
    "track2": [("sample_00001001", "['happy', 'excited']"),
               ("samplenew3_00000077", "[worried]"),
               ("samplenew4_00000300", "[]"),
               ("sample_00001002", "['Angry', 'annoyed']")],
    "track3": [("sample_00001001", "She smiles widely while talking about the trip, so she is happy and excited."),
               ("samplenew3_00000077", "He frowns and his voice trembles: he is worried."),
               ("samplenew4_00000300", "Calm face and flat voice."),
               ("sample_00001002", "He raises his voice and complains, showing anger and annoyance.")],
    "subtitles": [("sample_00001001", "我们明天去旅行", "We are going on a trip tomorrow!"),
                  ("samplenew3_00000077", "他还没回来", "He is still not back."),
                  ("samplenew4_00000300", "好的", ""),
                  ("sample_00001002", "又是这样", "Again! Always the same thing.")],
    "extra_clips": ["sample_00009999"],
}  # fmt: skip


def miniature_test_names(dataset: str) -> list[str]:
    """The miniature's test names of one set, in the official order (for tests)."""
    content = MINIATURE[dataset]
    if dataset == "OVMERDPlus":
        return [name for name, _ in content["subtitles"]]
    names = [name for name, _ in content["splits"][content["test"]]]
    if dataset == "IEMOCAPFour":
        names = [n for n in names if n.startswith("Ses05")]
    return names




def _numpy_values(entries: list[tuple[str, dict[str, Any]]], index: int) -> dict:
    """One split as the dict the official preprocessing saves; ``"np:<x>"`` values become numpy
    scalars (np.int64 for integers, np.float32 for floats) and every other name is an np.str_."""
    import numpy as np

    out = {}
    for i, (name, entry) in enumerate(entries):
        values = {}
        for key, value in entry.items():
            if isinstance(value, str) and value.startswith("np:"):
                text = value[3:]
                value = np.int64(int(text)) if text.lstrip("-").isdigit() else np.float32(float(text))
            values[key] = value
        out[np.str_(name) if (index + i) % 2 else name] = values
    return out


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:  # pandas' to_csv writes utf-8, no BOM
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_audio(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = torch.arange(9600 + 1600 * (index % 4)) / 16000  # 0.6 - 1.0 s
    write_wav(path, 0.3 * torch.sin(2 * math.pi * (220 + 40 * index) * t), 16000)


def _write_video(path: Path, index: int) -> None:
    """8 frames of 32x32 at 4 fps, MPEG-4 Part 2 in an .mp4 or .avi container (needs PyAV)."""
    try:
        import av
        import numpy as np
    except ImportError as e:
        raise ImportError("writing the miniature's videos needs PyAV: pip install 'merr1[media]'") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(8):
            frame = np.zeros((32, 32, 3), dtype=np.uint8)
            frame[..., index % 3] = 40 + 25 * i
            frame[: 4 * (i + 1), :, (index + 1) % 3] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_ext(dataset: str, name: str, index: int) -> str:
    exts = BENCHMARKS[dataset].video_exts
    # MER2023/MER2024 take .mp4, else .avi: one clip of each set is only in .avi.
    return exts[1] if len(exts) > 1 and index == len(miniature_test_names(dataset)) - 1 else exts[0]


def _write_media(root: Path, dataset: str, names: Sequence[str], with_video: bool) -> None:
    spec = BENCHMARKS[dataset]
    for i, name in enumerate(names):
        _write_audio(root / spec.audio_dir / f"{name}.wav", i)
        if with_video:
            _write_video(root / spec.video_dir / f"{name}{_video_ext(dataset, name, i)}", i)


def write_miniature(root: str | Path, *, with_media: bool = True, with_video: bool = True) -> Path:
    """Write the nine test sets and MER-Caption+ in their released layouts under ``root``.

    Args:
        root: output folder; gets ``<official folder>/`` per set (e.g. ``mer2023-dataset-process``)
            and ``mer2025-dataset/``. Existing files are overwritten.
        with_media: write the ``.wav`` (and video) files of every test / MER-Caption+ sample.
        with_video: write the video files too (needs PyAV).

    Returns:
        ``root``.
    """
    import numpy as np

    root = Path(root)
    for dataset, content in MINIATURE.items():
        spec = BENCHMARKS[dataset]
        folder = root / spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        if dataset == "OVMERDPlus":
            _write_csv(folder / spec.subtitle_file, ["name", "sentence"], content["subtitles"])
            _write_csv(folder / spec.label_file, ["name", "openset"], content["ovlabel"])
        else:
            splits = {key: _numpy_values(entries, i) for i, (key, entries) in enumerate(content["splits"].items())}
            np.savez_compressed(folder / spec.label_file, **splits)
            _write_csv(folder / spec.subtitle_file, ["name", "chinese", "english"], content["subtitles"])
        if with_media:
            _write_media(folder, dataset, miniature_test_names(dataset), with_video)

    caption = root / CAPTION_FOLDER
    caption.mkdir(parents=True, exist_ok=True)
    _write_csv(caption / "track2_train_mercaptionplus.csv", ["name", "openset"], MINIATURE_CAPTION["track2"])
    _write_csv(caption / "track3_train_mercaptionplus.csv", ["name", "reason"], MINIATURE_CAPTION["track3"])
    _write_csv(caption / "subtitle_chieng.csv", ["name", "chinese", "english"], MINIATURE_CAPTION["subtitles"])
    if with_media:
        names = [name for name, _ in MINIATURE_CAPTION["track2"]] + MINIATURE_CAPTION["extra_clips"]
        for i, name in enumerate(names):
            _write_audio(caption / "audio" / f"{name}.wav", i)
            if with_video:
                _write_video(caption / "video" / f"{name}.mp4", i)
    return root
