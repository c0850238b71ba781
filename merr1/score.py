"""MER-UniBench scoring (METHOD section 3), as a library and as ``python -m merr1.score``; the
command line also scores MME-Emotion judge outputs (``python -m merr1.score mme``, the official
metric arithmetic of ``merr1.components.mme_emotion``: see ``_run_mme``).

Scores reproduce the official AffectGPT evaluation bit for bit (its public code: the
``calculate_openset_overlap_rate``/``wheel_metric_calculation`` OV-MERD+ metric,
``calculate_openset_onehot_hitrate``/``hitrate_metric_calculation`` and the sentiment step of
``calculate_dimension_zeroshot``), so the floating-point order of operations is the official one:
- per wheel, P^k and R^k are ``numpy.mean`` of the per-sample values: numpy's pairwise sum
  (8 accumulators, blocks of 128, halving above) divided by the count (``_numpy_mean``);
- F^k = 2 * (P^k * R^k) / (P^k + R^k) from the averaged P and R, with no zero guard (0/0 -> NaN);
- the reported value is the mean over the 5 wheels: a left-to-right sum divided by 5, so a NaN
  wheel makes it NaN; a wheel with no kept sample has P = R = F = NaN (``numpy.mean([])``);
- hit rate per wheel: the number of hits divided by the number of kept samples;
- sentiment WAF and accuracy: scikit-learn's ``f1_score(average="weighted")`` and
  ``accuracy_score`` over the samples with a non-zero GT score; a class never predicted scores 0.
  Per-class F is 2 tp / (2 tp + fp + fn) from counts as scikit-learn >= 1.4 computes it
  (default), or 2 P R / (P + R) as scikit-learn <= 1.3 did (``f1_formula="precision_recall"``):
  the two differ in the last bit for about a third of inputs, so match the checker's version.

Readings and deviations (documented, tested):
- a sample is kept on wheel k when its mapped GT set is non-empty (empty label = neutral = skipped);
- hit rate counts |G ∩ Ŷ| like the official code, which for a one-word GT is [GT in prediction];
- ``score_basic_f1`` (the paper's F1 for the basic-emotion sets) is the OV-MERD+ computation
  with the one-word basic label as the GT set;
- names of predictions and GT must match exactly (the official code ignores extra predictions);
- the text ``"["`` parses to ``[]`` (official: error); an all-zero sentiment GT raises
  ``ValueError`` (official: ``IndexError``); a NaN sentiment GT score raises ``ValueError``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from functools import reduce
from operator import add
from pathlib import Path
from typing import Any, Mapping, Sequence

from merr1.components import mme_emotion
from merr1.components.emotion_wheel import (
    BITS_PER_WHEEL,
    NUM_WHEELS,
    EmotionWheels,
    parse_emotion_list,
)

_NAN = float("nan")
_FIELD = (1 << BITS_PER_WHEEL) - 1
_POPCOUNT = tuple(bin(i).count("1") for i in range(1 << BITS_PER_WHEEL))
# numpy's pairwise summation block size (PW_BLOCKSIZE in numpy's loops_utils.h).
_PW_BLOCKSIZE = 128


def _pairwise_sum(values: Sequence[float], lo: int, n: int) -> float:
    # numpy's float64 pairwise summation of values[lo:lo + n], same order of additions.
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += values[i]
        return res
    if n <= _PW_BLOCKSIZE:
        stop = lo + n - n % 8
        r = [reduce(add, values[lo + j : stop : 8]) for j in range(8)]
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(stop, lo + n):
            res += values[i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_sum(values, lo, half) + _pairwise_sum(values, lo + half, n - half)


def _numpy_mean(values: Sequence[float]) -> float:
    """``numpy.mean`` of a list of floats, bit for bit (NaN for an empty list)."""
    if not values:
        return _NAN
    return (0.0 + _pairwise_sum(values, 0, len(values))) / len(values)


def _f_score(precision: float, recall: float) -> float:
    # F^k = 2 P R / (P + R) as numpy float64 computes it: 0/0 -> NaN, NaN propagates.
    denom = precision + recall
    if denom == 0 or math.isnan(denom):
        return _NAN
    return 2 * (precision * recall) / denom


def _wheel_mean(values: Sequence[float]) -> float:
    # numpy.mean(..., axis=0) over the 5 wheels: left-to-right sum, then / 5.
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


def _aligned_names(preds: Mapping[str, Any], gts: Mapping[str, Any]) -> list[str]:
    if not isinstance(preds, Mapping) or not isinstance(gts, Mapping):
        raise ValueError("preds and gts must be mappings name -> value")
    if not gts:
        raise ValueError("empty input: no ground-truth samples")
    if gts.keys() != preds.keys():
        missing = [name for name in gts if name not in preds]
        extra = [name for name in preds if name not in gts]
        raise ValueError(
            f"prediction and ground-truth names differ: {len(missing)} GT name(s) without a "
            f"prediction (e.g. {missing[:3]}), {len(extra)} prediction(s) without GT (e.g. {extra[:3]})"
        )
    return list(gts)


def _packed_pairs(preds, gts, wheels: EmotionWheels) -> list[tuple[int, int]]:
    # Per sample (GT masks, prediction masks) of all wheels packed in one int each.
    names = _aligned_names(preds, gts)
    packed = wheels.map_text_packed
    return list(zip(map(packed, gts.values()), map(packed, map(preds.__getitem__, names))))


class _SampleScores(dict):
    # (GT mask << 8 | prediction mask) of one wheel -> (P_i, R_i), filled on first use.
    def __missing__(self, key: int) -> tuple[float, float]:
        g, y = key >> BITS_PER_WHEEL, key & _FIELD
        hits = _POPCOUNT[g & y]
        value = (hits / _POPCOUNT[y], hits / _POPCOUNT[g]) if y else (0.0, 0.0)
        self[key] = value
        return value


_SAMPLE_SCORES = _SampleScores()


def _kept_keys(pairs: list[tuple[int, int]], k: int) -> list[int]:
    # Wheel k's (GT mask << 8 | prediction mask) of the samples whose mapped GT is non-empty;
    # the others are skipped (METHOD section 3).
    shift = BITS_PER_WHEEL * k
    return [gk << BITS_PER_WHEEL | (y >> shift & _FIELD) for g, y in pairs if (gk := g >> shift & _FIELD)]


def _set_scores(pairs: list[tuple[int, int]]) -> dict[str, Any]:
    per_wheel, fs, ps, rs = [], [], [], []
    for k in range(NUM_WHEELS):
        kept = _kept_keys(pairs, k)
        # P_i = |G ∩ Ŷ| / |Ŷ|, R_i = |G ∩ Ŷ| / |G|, both 0 for an empty prediction.
        precisions, recalls = zip(*map(_SAMPLE_SCORES.__getitem__, kept)) if kept else ((), ())
        p, r = _numpy_mean(precisions), _numpy_mean(recalls)
        f = _f_score(p, r)
        per_wheel.append({"wheel": k + 1, "precision": p, "recall": r, "f1": f, "kept": len(kept)})
        fs.append(f)
        ps.append(p)
        rs.append(r)
    return {
        "f1": _wheel_mean(fs),
        "precision": _wheel_mean(ps),
        "recall": _wheel_mean(rs),
        "n": len(pairs),
        "per_wheel": per_wheel,
    }


def score_ovmerd(
    preds: Mapping[str, Any], gts: Mapping[str, Any], wheels: EmotionWheels | None = None
) -> dict[str, Any]:
    """Fine-grained OV-MERD+ scores: set precision/recall per wheel, F from the averaged P and R.

    Args:
        preds: name -> prediction string (e.g. ``"happy, excited"``) or list of words.
        gts: name -> GT label cell (e.g. ``"['Silly', 'Mad']"``) or list of words.
        wheels: the wheels to use (default: ``EmotionWheels.load()``).

    Returns:
        ``{"f1", "precision", "recall"}`` (means over the 5 wheels), ``"n"`` (samples given) and
        ``"per_wheel"``: 5 dicts ``{"wheel": 1..5, "precision", "recall", "f1", "kept"}``
        (``kept`` = samples whose mapped GT is non-empty). NaN where the protocol gives 0/0.
    """
    return _set_scores(_packed_pairs(preds, gts, wheels or EmotionWheels.load()))


def score_basic_f1(
    preds: Mapping[str, Any], gts: Mapping[str, Any], wheels: EmotionWheels | None = None
) -> dict[str, Any]:
    """The paper's F1 for the basic-emotion sets (MER2023, MER2024, MELD, IEMOCAP).

    Our reading: the OV-MERD+ computation (``score_ovmerd``) with the one-word basic label as
    the GT set, so per sample R_i = [GT hit] and P_i = [GT hit] / |Ŷ|. Same arguments and keys.
    """
    return score_ovmerd(preds, gts, wheels)


def score_hitrate(
    preds: Mapping[str, Any], gts: Mapping[str, Any], wheels: EmotionWheels | None = None
) -> dict[str, Any]:
    """Basic-emotion hit rate: per wheel, mean over kept samples of |G ∩ Ŷ| (= [GT in Ŷ]).

    Args:
        preds: name -> prediction string or list of words.
        gts: name -> basic-emotion label (one word, e.g. ``"happy"``; "neutral" maps to nothing
            and is skipped).
        wheels: the wheels to use (default: ``EmotionWheels.load()``).

    Returns:
        ``{"hit_rate"}`` (mean over the 5 wheels), ``"n"`` and ``"per_wheel"``: 5 dicts
        ``{"wheel": 1..5, "hit_rate", "kept"}``; a wheel with no kept sample is NaN.
    """
    pairs = _packed_pairs(preds, gts, wheels or EmotionWheels.load())
    per_wheel, rates = [], []
    for k in range(NUM_WHEELS):
        kept = _kept_keys(pairs, k)
        hits = [_POPCOUNT[(key >> BITS_PER_WHEEL) & key] for key in kept]  # |G & Ŷ| of the key
        rate = sum(hits) / len(hits) if hits else _NAN
        per_wheel.append({"wheel": k + 1, "hit_rate": rate, "kept": len(hits)})
        rates.append(rate)
    return {"hit_rate": _wheel_mean(rates), "n": len(pairs), "per_wheel": per_wheel}


F1_FORMULAS = ("counts", "precision_recall")


def _sentiment_f1(tp: int, num_true: int, num_pred: int, formula: str) -> float:
    # One class's F1 as scikit-learn computes it; 0 where it is undefined (zero_division="warn").
    if formula == "counts":  # scikit-learn >= 1.4: (1 + b^2) tp / (b^2 true + pred)
        denom = num_true + num_pred
        return 2 * tp / denom if denom else 0.0
    # scikit-learn <= 1.3: (1 + b^2) P R / (b^2 P + R) from the per-class P and R
    precision = tp / num_pred if num_pred else 0.0
    recall = tp / num_true if num_true else 0.0
    denom = precision + recall
    return 2.0 * precision * recall / denom if denom else 0.0


def score_sentiment(
    preds: Mapping[str, Any], gts: Mapping[str, Any], f1_formula: str = "counts"
) -> dict[str, Any]:
    """Sentiment WAF and accuracy (MOSI, MOSEI, SIMS, SIMSv2).

    Args:
        preds: name -> sentiment word; exactly ``"positive"`` -> 1, ``"negative"`` -> -1,
            anything else -> 0 (no lower-casing or stripping: ``"Positive"`` is 0).
        gts: name -> GT sentiment score (int or float); samples with score 0 are dropped.
        f1_formula: ``"counts"`` (scikit-learn >= 1.4) or ``"precision_recall"`` (scikit-learn
            <= 1.3); the two round differently in the last bit for about a third of inputs.

    Returns:
        ``{"waf", "accuracy", "n_nonzero", "n"}``: support-weighted F1 and accuracy of
        (gt > 0) vs (pred > 0) over the ``n_nonzero`` samples with a non-zero GT score.
    """
    if f1_formula not in F1_FORMULAS:
        raise ValueError(f"unknown f1_formula {f1_formula!r}; expected one of {F1_FORMULAS}")
    names = _aligned_names(preds, gts)
    num_pos = num_neg = tp_pos = tp_neg = pred_pos = 0
    for name in names:
        gt = gts[name]
        if isinstance(gt, bool) or not isinstance(gt, (int, float)) or math.isnan(gt):
            raise ValueError(f"sentiment GT of {name!r} must be a number, got {gt!r}")
        if gt == 0:
            continue
        positive = preds[name] == "positive"  # "negative" and anything else: not positive
        pred_pos += positive
        if gt > 0:
            num_pos += 1
            tp_pos += positive
        else:
            num_neg += 1
            tp_neg += not positive
    num = num_pos + num_neg
    if num == 0:
        raise ValueError("no sample with a non-zero sentiment GT score: WAF and accuracy are undefined")
    f_neg = _sentiment_f1(tp_neg, num_neg, num - pred_pos, f1_formula)
    f_pos = _sentiment_f1(tp_pos, num_pos, pred_pos, f1_formula)
    return {
        "waf": (f_neg * num_neg + f_pos * num_pos) / num,
        "accuracy": (tp_pos + tp_neg) / num,
        "n_nonzero": num,
        "n": len(names),
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

_SCORERS = {
    "ovmerd": score_ovmerd,
    "hitrate": score_hitrate,
    "basic-f1": score_basic_f1,
    "sentiment": score_sentiment,
}
_HELP = {
    "ovmerd": "OV-MERD+ set precision/recall/F1 over the 5 wheels",
    "hitrate": "basic-emotion hit rate (one-word GT labels)",
    "basic-f1": "basic-emotion set F1 (the OV-MERD+ computation with one-word GT labels)",
    "sentiment": "sentiment WAF and accuracy (predictions: positive/negative/other words)",
}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")


def _read_jsonl(path: Path, key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or "name" not in record or key not in record:
                raise ValueError(f'{path}:{lineno}: expected an object with "name" and "{key}"')
            name = record["name"]
            if not isinstance(name, str):
                raise ValueError(f'{path}:{lineno}: "name" must be a string, got {name!r}')
            if name in out:
                raise ValueError(f"{path}:{lineno}: duplicate name {name!r}")
            out[name] = record[key]
    return out


def _read_csv(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        key = next((k for k in keys if k in fields), None)
        if "name" not in fields or key is None:
            raise ValueError(f"{path}: expected CSV columns 'name' and one of {list(keys)}, got {fields}")
        for row in reader:
            lineno = reader.line_num
            name = row["name"]
            if name is None or row[key] is None:
                raise ValueError(f"{path}:{lineno}: missing fields")
            if name in out:
                raise ValueError(f"{path}:{lineno}: duplicate name {name!r}")
            out[name] = row[key]
    return out


def read_records(path: str | Path, key: str, csv_keys: Sequence[str]) -> dict[str, Any]:
    """name -> value from a JSONL file (``{"name", key}`` per line) or a ``.csv`` file.

    Raises:
        ValueError: missing file, malformed line (with its line number), duplicate name.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, csv_keys)
    return _read_jsonl(path, key)


def _sentiment_labels(gts: dict[str, Any], path: Path) -> dict[str, Any]:
    out = {}
    for name, value in gts.items():
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{path}: sentiment label of {name!r} is not a number: {value!r}") from None
        out[name] = value
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _run_map(words_path: Path) -> None:
    _check_file(words_path)
    wheels = EmotionWheels.load()
    with open(words_path, encoding="utf-8") as f:
        for line in f:
            word = line.rstrip("\r\n")
            if word.strip():
                print(json.dumps({"word": word, "categories": list(wheels.map_word(word))}))


def read_judged(path: Path) -> list[Any]:
    """The records of one MME-Emotion judge-output file (a JSON list, the official layout)."""
    _check_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of judge-output records, got {type(data).__name__}")
    return data


def _run_mme(task: str, judged: Path, alpha: float) -> dict[str, Any]:
    """MME-Emotion metrics of one task's judge-output file, or (``task == "overall"``) of a folder
    holding all 8 task files named ``<TASK>.json``, pooled as the official Overall script does."""
    if task != "overall":
        return mme_emotion.score_task(read_judged(judged), task, alpha=alpha, source=str(judged))
    if not judged.is_dir():
        raise ValueError(f"{judged}: not a folder (--task overall reads <folder>/<TASK>.json for all 8 tasks)")
    paths = {t: judged / f"{t}.json" for t in mme_emotion.TASKS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"{judged}: missing task file(s) {missing} (the Overall score pools all 8 tasks)")
    records = {t: read_judged(p) for t, p in paths.items()}
    return mme_emotion.score_overall(records, alpha=alpha, sources={t: str(p) for t, p in paths.items()})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m merr1.score {ovmerd,hitrate,basic-f1,sentiment} --pred P --gt G`` | ``map --words F``
    | ``mme --task TASK|overall --judged FILE|DIR``."""
    parser = argparse.ArgumentParser(prog="python -m merr1.score", description="MER-UniBench scoring.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _SCORERS:
        p = sub.add_parser(command, help=f"{_HELP[command]}; prints one JSON object (NaN as null)")
        p.add_argument("--pred", type=Path, required=True, help='JSONL {"name", "pred"} or CSV name,pred')
        p.add_argument("--gt", type=Path, required=True, help='JSONL {"name", "label"} or CSV name,openset|label')
        if command == "sentiment":
            p.add_argument(
                "--f1-formula", choices=F1_FORMULAS, default="counts",
                help="per-class F1 as scikit-learn >= 1.4 (counts) or <= 1.3 (precision_recall)",
            )
    p = sub.add_parser("map", help="one JSON line per word with its 5 level-1 categories")
    p.add_argument("--words", type=Path, required=True, help="text file, one word per line")
    p = sub.add_parser(
        "mme", help="MME-Emotion Recognition/Reasoning/CoT (percent) of judge outputs; prints one JSON object"
    )
    p.add_argument("--task", required=True, choices=[*mme_emotion.TASKS, "overall"],
                   help="a task (its official parser) or overall (all 8 tasks pooled)")  # fmt: skip
    p.add_argument("--judged", type=Path, required=True,
                   help="judge-output JSON file (a list of records with score and ground_truth); for "
                        "overall a folder with <TASK>.json for every task")  # fmt: skip
    p.add_argument("--alpha", type=float, default=mme_emotion.DEFAULT_ALPHA, help="CoT = alpha Rec + (1 - alpha) Rea")
    args = parser.parse_args(argv)
    try:
        if args.command == "map":
            _run_map(args.words)
            return 0
        if args.command == "mme":
            print(json.dumps(_run_mme(args.task, args.judged, args.alpha), ensure_ascii=False))
            return 0
        preds = read_records(args.pred, "pred", ("pred", "openset"))
        gts = read_records(args.gt, "label", ("openset", "label"))
        if args.command == "sentiment":
            result = score_sentiment(preds, _sentiment_labels(gts, args.gt), args.f1_formula)
        else:
            result = _SCORERS[args.command](preds, gts)
    except ValueError as e:
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
    print(json.dumps(_json_safe(result), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
