"""MER-UniBench read as released: the nine official test sets, straight from their folders.

The official AffectGPT evaluation (github.com/zeroQiaoba/AffectGPT, code at commit d961cab; paths
below are relative to its ``AffectGPT/`` folder) reads each test set from a root folder with its
own label file, subtitle file and media folders. ``read_test_set(dataset, root)`` reproduces what
its dataset class's ``read_test_names`` / ``get_test_name2gt`` and ``evaluation.py``'s label
mapping give, one table row per set (``BENCHMARKS``):

- MER2023 (``mer2023-dataset-process/``): ``label-6way.npz`` key ``test1_corpus``;
  ``transcription-engchi-polish.csv`` column ``english``; ``video/<name>.mp4``, else ``.avi``;
  ``audio/<name>.wav``.
- MER2024 (``mer2024-dataset-process/``): ``label-6way.npz`` ``test1_corpus``;
  ``transcription_merge.csv`` column **chinese**; ``video/`` .mp4 else .avi; ``audio/``.
- MELD (``meld-process/``): ``label.npz`` ``test_corpus``; ``english``; ``subvideo/`` .mp4; ``subaudio/``.
- IEMOCAPFour (``iemocap-process/``): ``label_4way.npz`` ``whole_corpus`` (Session 5 is test);
  ``english``; ``subvideo-tgt/`` .avi; ``subaudio/``.
- CMUMOSI (``cmumosi-process/``): ``label.npz`` ``test_corpus``; ``english``; ``subvideo/`` .mp4; ``subaudio/``.
- CMUMOSEI (``cmumosei-process/``): same, video in ``subvideo_new/``.
- SIMS (``sims-process/``) and SIMSv2 (``simsv2-process/``): ``label.npz`` ``test_corpus``;
  ``english``; ``video/`` resp. ``video_new/`` .mp4; ``audio/``.
- OVMERDPlus (``ovmerdplus-process/``): ``ovlabel.csv`` (``name, openset``); ``subtitle_eng.csv``
  column **sentence**; ``video/`` .mp4; ``audio/``.

(``transcription-engchi-polish.csv`` for every set without another name; ``config.py:29-113``.)

Labels (the GT as scored, ``EvalRow.label``):

- MER2023/MER2024: ``corpus[name]['emo']``, an English word (``mer2023.py:127-134``);
- MELD: ``emo`` is an index through anger, joy, sadness, neutral, disgust, fear, surprise
  (``meld.py:28-32``); like ``evaluation.py:214-221`` only non-strings are mapped;
- IEMOCAPFour: ``whole_corpus``; test = the names with ``int(name[4]) - 1 == 4`` (Session 5,
  ``iemocap.py:102-120``), in dict order; ``emo`` through happy, sad, neutral, anger
  (``iemocap.py:30-34``; every label is mapped, so a string label is an error as there);
- sentiment sets: the float ``corpus[name]['val']`` (MOSI/MOSEI in [-3, 3], SIMS/SIMSv2 in
  [-1, 1]); samples with value 0 stay in the set and the metric drops them (``evaluation.py:186-196``);
- OV-MERD+: the test names are the ``name`` rows of ``subtitle_eng.csv`` in file order; the label is
  ``", ".join(string_to_list(openset))`` of ``ovlabel.csv``, ``"neutral"`` for an empty list
  (``ovmerdplus_dataset.py:57-66,97-104``).

Label ``.npz`` files hold pickled Python dicts (``np.savez_compressed(..., test_corpus=dict)``),
which ``np.load(allow_pickle=True)`` would unpickle with no restriction: a crafted file could run
any code. ``read_npz_dict`` parses the zip and ``.npy`` header itself and unpickles with
``RestrictedUnpickler``, which admits only the numpy array/scalar/dtype reconstructors such a
file needs (and ``_codecs.encode`` for latin-1, which protocol-2 pickles use for bytes); anything
else raises ``UnsafePickleError`` naming the global it refused.

Deliberate deviations (docs/mer_unibench.md):

- a sample the official code would crash on (a name with no subtitle row, an OV-MERD+ name
  without a label, an unknown label index, a non-number sentiment value) is a bad row reported by
  name (skipped unless ``strict=True``) instead of an exception;
- a NaN sentiment value is a bad row (the official metric counts it as negative);
- MER2023/MER2024 labels must be strings (the official code maps a non-string through a table
  built from an unordered ``set``, so its meaning is not defined);
- the train splits are not read (the official constructors need them, evaluation does not);
- the model sees the clip's video frames and audio (Qwen2.5-Omni's inputs), not AffectGPT's
  OpenFace crops; so every set needs its video files (OV-MERD+ too) and ``openface_face/`` is
  not read;
- CSV cells are read with the csv module; names are stripped, and cells pandas reads as NaN
  are handled as NaN (``merr1.components.data.datasets.is_pandas_na``).
"""

from __future__ import annotations

import ast
import importlib
import io
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from merr1.components.config_checks import forwards_kwargs_to
from merr1.components.data.datasets import (
    MEDIA_DIR,
    BadRowError,
    EvalRow,
    EvalSet,
    MERUniBenchDataset,
    is_pandas_na,
    read_csv,
)
from merr1.components.emotion_wheel import parse_emotion_list

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "mer_unibench_official",
    "media_files",
    "official_eval_set",
    "read_npz_dict",
    "read_test_set",
    "string_to_list",
]

MELD_IDX2EMO = {0: "anger", 1: "joy", 2: "sadness", 3: "neutral", 4: "disgust", 5: "fear", 6: "surprise"}
IEMOCAP_IDX2EMO = {0: "happy", 1: "sad", 2: "neutral", 3: "anger"}
TRANSCRIPTION_CSV = "transcription-engchi-polish.csv"
IEMOCAP_TEST_SESSION = 5


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one official test set keeps its files and how its labels read (module docstring).

    Attributes:
        id: the official data set name (``inference_hybird.py:139``).
        display: the paper's name for reports.
        folder: the official root folder name (``config.py:29-42``).
        task: "basic", "sentiment" or "ovmerd" (``evaluation.py:93-101``).
        label_file: the label file in the root.
        split: the npz key of the test split (None: OV-MERD+'s CSV labels).
        subtitle_file, subtitle_column: the subtitle CSV and the column the official class reads.
        video_dir, video_exts: the video folder and the extensions tried in order.
        audio_dir: the folder of ``{name}.wav``.
        num_test: the official test-set size (asserted by the official ``read_test_names``).
        idx2emo: index -> emotion for integer labels (None: labels are strings).
        string_labels: whether a string label is taken as is (MELD via ``evaluation.py``) or is
            an error (IEMOCAP maps every label at construction).
    """

    id: str
    display: str
    folder: str
    task: str
    label_file: str
    split: str | None
    subtitle_file: str
    subtitle_column: str
    video_dir: str
    video_exts: tuple[str, ...]
    audio_dir: str
    num_test: int
    idx2emo: Mapping[int, str] | None = None
    string_labels: bool = True


# In the official evaluation order (inference_hybird.py:139, evaluation.py:288).
BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.id: spec
    for spec in (
        BenchmarkSpec("MER2023", "MER2023", "mer2023-dataset-process", "basic", "label-6way.npz", "test1_corpus",
                      TRANSCRIPTION_CSV, "english", "video", (".mp4", ".avi"), "audio", 411),
        BenchmarkSpec("MER2024", "MER2024", "mer2024-dataset-process", "basic", "label-6way.npz", "test1_corpus",
                      "transcription_merge.csv", "chinese", "video", (".mp4", ".avi"), "audio", 1169),
        BenchmarkSpec("MELD", "MELD", "meld-process", "basic", "label.npz", "test_corpus",
                      TRANSCRIPTION_CSV, "english", "subvideo", (".mp4",), "subaudio", 2610, MELD_IDX2EMO),
        BenchmarkSpec("IEMOCAPFour", "IEMOCAP", "iemocap-process", "basic", "label_4way.npz", "whole_corpus",
                      TRANSCRIPTION_CSV, "english", "subvideo-tgt", (".avi",), "subaudio", 1241, IEMOCAP_IDX2EMO,
                      string_labels=False),
        BenchmarkSpec("CMUMOSI", "MOSI", "cmumosi-process", "sentiment", "label.npz", "test_corpus",
                      TRANSCRIPTION_CSV, "english", "subvideo", (".mp4",), "subaudio", 686),
        BenchmarkSpec("CMUMOSEI", "MOSEI", "cmumosei-process", "sentiment", "label.npz", "test_corpus",
                      TRANSCRIPTION_CSV, "english", "subvideo_new", (".mp4",), "subaudio", 4659),
        BenchmarkSpec("SIMS", "SIMS", "sims-process", "sentiment", "label.npz", "test_corpus",
                      TRANSCRIPTION_CSV, "english", "video", (".mp4",), "audio", 457),
        BenchmarkSpec("SIMSv2", "SIMSv2", "simsv2-process", "sentiment", "label.npz", "test_corpus",
                      TRANSCRIPTION_CSV, "english", "video_new", (".mp4",), "audio", 1034),
        BenchmarkSpec("OVMERDPlus", "OV-MERD+", "ovmerdplus-process", "ovmerd", "ovlabel.csv", None,
                      "subtitle_eng.csv", "sentence", "video", (".mp4",), "audio", 532),
    )
}  # fmt: skip

# Clips the official preprocessing itself flags (toolkit/preprocess/meld.py:103-105: "these two
# files are problematic"); test_dia279_utt15 is the last MELD test name. If its media cannot be
# decoded, scripts/prepare_mer_unibench.py names it as a known problem, not as a new one.
KNOWN_BAD_CLIPS = {"MELD": {"test_dia279_utt15": "flagged as problematic by the official MELD preprocessing"}}


def spec_for(dataset: str) -> BenchmarkSpec:
    """The spec of an official id (``"MER2023"``) or display name (``"OV-MERD+"``)."""
    for spec in BENCHMARKS.values():
        if dataset in (spec.id, spec.display):
            return spec
    raise ValueError(f"unknown MER-UniBench data set {dataset!r}; expected one of {list(BENCHMARKS)}")


# ---------------------------------------------------------------------------------------------
# Label .npz files: pickled dicts, read without executing arbitrary pickles


class UnsafePickleError(ValueError):
    """A pickle that refers to something the restricted unpickler does not admit."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1"); nothing else is admitted.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r} is not admitted (only latin1)")
    return text.encode("latin1")


def _numpy_multiarray():
    # numpy >= 2 keeps it in numpy._core (numpy.core is a deprecated alias); numpy 1.x in numpy.core.
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


_ADMITTED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),  # ndarray pickles (numpy >= 2)
    ("numpy.core.multiarray", "_reconstruct"),  # ndarray pickles (numpy 1.x)
    ("numpy._core.multiarray", "scalar"),  # numpy scalars (np.str_, np.int64, np.float64, ...)
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles (latin1 only)
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a numpy object array of plain Python values
    needs (``_ADMITTED_GLOBALS``); any other global raises ``UnsafePickleError`` before it is
    imported or called. Dicts, lists, tuples, strings, numbers, bools and None need no global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ADMITTED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: label files may only hold numpy arrays and scalars of "
                f"plain Python values (dicts, lists, strings, numbers)"
            )
        if module == "_codecs":
            return _latin1_encode
        if module == "numpy":
            return getattr(importlib.import_module("numpy"), name)
        return getattr(_numpy_multiarray(), name)


_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 10000  # numpy's own default limit (np.load max_header_size)


def _npy_object(data: bytes, where: str) -> Any:
    """The value of a ``.npy`` file holding a pickled 0-d object array (a dict in label files)."""
    if not data.startswith(_NPY_MAGIC) or len(data) < 10:
        raise ValueError(f"{where} is not a .npy array")
    major = data[6]
    if major == 1:
        header_len, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        header_len, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise ValueError(f"{where}: unsupported .npy format version {major}")
    if header_len > _MAX_NPY_HEADER:
        raise ValueError(f"{where}: .npy header of {header_len} bytes is too long")
    try:
        header = ast.literal_eval(data[start : start + header_len].decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: unreadable .npy header ({e})") from None
    if not isinstance(header, dict) or header.get("descr") != "|O":
        descr = header.get("descr") if isinstance(header, dict) else header
        shape = header.get("shape") if isinstance(header, dict) else None
        raise ValueError(f"{where} holds a {descr!r} array of shape {shape}, not a pickled dict")
    try:
        value = RestrictedUnpickler(io.BytesIO(data[start + header_len :])).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    except Exception as e:  # a corrupt pickle raises many types
        raise ValueError(f"{where}: unreadable pickle ({type(e).__name__}: {e})") from None
    import numpy

    if not isinstance(value, numpy.ndarray) or value.shape != ():
        shape = getattr(value, "shape", None)
        raise ValueError(f"{where} holds a {type(value).__name__} of shape {shape}, not a pickled dict")
    return value.item()


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and str subclasses (np.str_) -> plain Python values, recursively."""
    import numpy

    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numpy.ndarray):
        return _plain(value.tolist())
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)
    return value


def read_npz_dict(path: str | Path, key: str) -> dict[Any, Any]:
    """The dict stored under ``key`` of an ``np.savez``/``np.savez_compressed`` file, unpickled
    with ``RestrictedUnpickler`` (never ``np.load(allow_pickle=True)``).

    Returns:
        The dict with numpy scalars turned into Python ints/floats/strs, in stored order.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle refers to a global outside the admitted numpy/builtin set.
        ValueError: not an npz file, no such key (the message lists the keys), or the key holds
            something other than a pickled dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    where = f"{path} [{key}]"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            if f"{key}.npy" not in members:
                keys = [m[: -len(".npy")] for m in members if m.endswith(".npy")]
                raise ValueError(f"{path} has no key {key!r}; its keys are {keys}")
            data = archive.read(f"{key}.npy")
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not an .npz file ({e})") from None
    value = _npy_object(data, where)
    if not isinstance(value, dict):
        raise ValueError(f"{where} holds a {type(value).__name__}, not a dict of samples")
    return _plain(value)


# ---------------------------------------------------------------------------------------------
# Labels


def string_to_list(text: Any) -> list[str]:
    """The official ``string_to_list`` (toolkit/utils/functions.py:608-626) for CSV cells:
    drop one leading ``[`` and one trailing ``]``, split on ``'``, ``"`` and ``,``, strip items,
    drop empty ones; case is kept. None and pandas-NA cells are ``[]``. Deviation: ``"["`` gives
    ``[]`` (official: IndexError)."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or (isinstance(text, str) and is_pandas_na(text)):
        return []
    if not isinstance(text, str):
        raise BadRowError("unknown label format", repr(text))
    if text.startswith("["):
        text = text[1:]
    if text.endswith("]"):
        text = text[:-1]
    return [item.strip() for item in re.split(r"['\",]", text) if item.strip() not in ("", ",")]


def _basic_label(spec: BenchmarkSpec, entry: Any) -> str:
    """The English emotion word of one npz entry of a basic-emotion set."""
    if not isinstance(entry, dict) or "emo" not in entry:
        raise BadRowError("bad label entry", f"expected a dict with 'emo', got {entry!r}")
    emo = entry["emo"]
    if isinstance(emo, str):
        if spec.string_labels:
            return emo
        raise BadRowError("unknown label", f"'emo' is the string {emo!r}; {spec.id} labels are indices into "
                                           f"{dict(spec.idx2emo)}")  # fmt: skip
    if spec.idx2emo is None:
        raise BadRowError("unknown label", f"'emo' is {emo!r}; {spec.id} labels are emotion words")
    try:
        return spec.idx2emo[emo]  # a dict lookup, as the official code does (3 and 3.0 both work)
    except (KeyError, TypeError):
        raise BadRowError("unknown label", f"'emo' {emo!r} is not an index of {dict(spec.idx2emo)}") from None


def _sentiment_label(entry: Any) -> float:
    """The sentiment value of one npz entry (zeros are kept: the metric drops them)."""
    if not isinstance(entry, dict) or "val" not in entry:
        raise BadRowError("bad label entry", f"expected a dict with 'val', got {entry!r}")
    val = entry["val"]
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise BadRowError("unreadable score", f"'val' is {val!r}, not a number")
    if math.isnan(val):
        raise BadRowError("unreadable score", "'val' is NaN")
    return float(val)


def _words(task: str, label: Any) -> list[str]:
    if task == "sentiment":
        return []
    if task == "basic":
        word = label.strip().lower()
        return [word] if word else []
    return parse_emotion_list(label)


def _npz_test_corpus(spec: BenchmarkSpec, root: Path) -> dict[str, Any]:
    corpus = read_npz_dict(root / spec.label_file, spec.split)
    if spec.split != "whole_corpus":
        return corpus
    # IEMOCAP (iemocap.py:58-62,102-120): session = int(name[4]) - 1; index 4 (Session 5) is test.
    test = {}
    for name, entry in corpus.items():
        try:
            session = int(str(name)[4])
        except (ValueError, IndexError):
            raise ValueError(
                f"{root / spec.label_file} [whole_corpus]: name {name!r} has no session digit at position 4 "
                f"(IEMOCAP names look like Ses05F_impro01_F000)"
            ) from None
        if session == IEMOCAP_TEST_SESSION:
            test[name] = entry
    return test


def read_test_set(dataset: str, root: str | Path) -> list[EvalRow]:
    """The test samples of one official set, as the official evaluation sees them.

    Args:
        dataset: official id (``BENCHMARKS``, e.g. "MER2023", "IEMOCAPFour") or display name.
        root: the set's root folder as released (e.g. ``.../mer2023-dataset-process``).

    Returns:
        One ``EvalRow`` per test name, in the official order: ``label`` the GT as scored,
        ``subtitle`` None where the subtitle file has no row, ``problem`` for an unusable label.

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable label or subtitle file or column.
    """
    spec = spec_for(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{spec.id}: root folder {root} not found (the release folder is named {spec.folder}; docs/mer_unibench.md)"
        )
    rows = read_csv(root / spec.subtitle_file, ("name", spec.subtitle_column))
    subtitles = {row["name"]: "" if is_pandas_na(row[spec.subtitle_column]) else row[spec.subtitle_column]
                 for row in rows}  # fmt: skip
    out: list[EvalRow] = []
    if spec.task == "ovmerd":
        labels = {row["name"]: row["openset"] for row in read_csv(root / spec.label_file, ("name", "openset"))}
        for row in rows:  # the test names: every subtitle row, in file order
            name = row["name"]
            entry = EvalRow(name, subtitle=subtitles[name])
            if name not in labels:
                entry.problem = BadRowError("no label", f"not in {spec.label_file}")
            else:
                try:
                    entry.label = ", ".join(string_to_list(labels[name]) or ["neutral"])
                    entry.words = _words(spec.task, entry.label)
                except BadRowError as e:
                    entry.problem = e
            out.append(entry)
        return out
    for name, value in _npz_test_corpus(spec, root).items():
        entry = EvalRow(str(name), subtitle=subtitles.get(str(name)))
        try:
            entry.label = _sentiment_label(value) if spec.task == "sentiment" else _basic_label(spec, value)
            entry.words = _words(spec.task, entry.label)
        except BadRowError as e:
            entry.problem = e
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# Media files and the evaluation set


def media_files(dataset: str, root: str | Path, name: str) -> tuple[Path, Path | None]:
    """(audio path, video path or None) of one sample as the official class builds them:
    ``root/<audio dir>/<name>.wav`` (may not exist) and the first existing
    ``root/<video dir>/<name><ext>`` (MER2023/MER2024: ``.mp4``, else ``.avi``)."""
    spec = spec_for(dataset)
    root = Path(root)
    audio = root / spec.audio_dir / f"{name}.wav"
    for ext in spec.video_exts:
        video = root / spec.video_dir / f"{name}{ext}"
        if video.is_file():
            return audio, video
    return audio, None


def official_eval_set(
    dataset: str, root: str | Path, media_dir: str | Path | None = None, name: str | None = None
) -> EvalSet:
    """``read_test_set`` as an ``EvalSet`` (media cache default ``{root}/media_cache``)."""
    spec = spec_for(dataset)
    root = Path(root)
    return EvalSet(
        name=name or spec.display,
        task=spec.task,
        rows=read_test_set(spec.id, root),
        media_dir=Path(media_dir) if media_dir is not None else root / MEDIA_DIR,
        source=str(root),
        benchmark=spec.id,
    )


@forwards_kwargs_to(MERUniBenchDataset)
def mer_unibench_official(
    tokenizer,
    dataset: str,
    root: str,
    mode: str = "slow",
    *,
    media_dir: str | None = None,
    name: str | None = None,
    modalities: Sequence[str] = ("audio", "video"),
    **kwargs,
) -> MERUniBenchDataset:
    """One official MER-UniBench test set read as released (YAML builder).

    Args:
        tokenizer: HF tokenizer.
        dataset: official id (MER2023, MER2024, MELD, IEMOCAPFour, CMUMOSI, CMUMOSEI, SIMS,
            SIMSv2, OVMERDPlus) or the paper's name (e.g. "OV-MERD+", "MOSI").
        root: the set's root folder as released.
        mode: "slow" or "fast".
        media_dir: the decoded-media cache (default ``{root}/media_cache``, written by
            ``scripts/prepare_mer_unibench.py``).
        name: report name (default: the paper's name, e.g. "OV-MERD+").
        modalities, kwargs: as ``MERUniBenchDataset``.

    Raises:
        ValueError: media wanted but the cache folder does not exist (the message gives the
            command that makes it).
    """
    eval_set = official_eval_set(dataset, root, media_dir, name)
    if modalities and not eval_set.media_dir.is_dir():
        raise ValueError(
            f"{eval_set.name}: no media cache at {eval_set.media_dir}; decode the media first: python "
            f"scripts/prepare_mer_unibench.py --set_root {eval_set.benchmark}={root} --processor <checkpoint dir> "
            f"(see docs/mer_unibench.md), or set media_dir"
        )
    return MERUniBenchDataset(tokenizer, eval_set, mode, modalities=modalities, **kwargs)

