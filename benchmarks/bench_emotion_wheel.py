"""Emotion-wheel mapping and MER-UniBench scoring speed on one CPU core (pure Python).

Targets (issue 8): map 1 million words on all 5 wheels in < 0.25 s; score 1,000 OV-MERD+ samples
in < 10 ms. Each row is the best of ``--repeats`` runs, as process CPU time (what one core
spends; robust to other processes on a shared machine) and wall time. For scale, the table also
times a fixed pure-Python loop (10 million integer additions) on the same machine, and the
mapping computed on the fly from the raw maps (steps 2-4 without the precomputed table).

Usage (from the repository root; ``PYTHONPATH=.`` when another merr1 checkout is installed):
``python benchmarks/bench_emotion_wheel.py [--num-words 1000000] [--num-samples 1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from typing import Callable

from merr1.components import emotion_wheel
from merr1.components.emotion_wheel import ASSET_DIR, EmotionWheels, build_wheel_map, read_wheel_rows
from merr1 import score as score_module
from merr1.score import score_hitrate, score_ovmerd, score_sentiment


def best_time(fn: Callable[[], object], repeats: int, setup: Callable[[], None] | None = None) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) over ``repeats`` runs of ``fn``."""
    cpu, wall = float("inf"), float("inf")
    for _ in range(repeats):
        if setup is not None:
            setup()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall


def python_loop() -> int:
    total = 0
    for i in range(10_000_000):
        total += i
    return total


def make_words(keys: list[str], num: int, rng: random.Random, capitalised: float = 0.0) -> list[str]:
    """Parsed-prediction-like words: 10% unknown words, ``capitalised`` share of capitalised
    keys (not normalised: they take the normalisation fallback), the rest table keys."""
    words = []
    for _ in range(num):
        r = rng.random()
        if r < 0.1:
            words.append(f"unknown{rng.randrange(1000)}")
        elif r < 0.1 + capitalised:
            words.append(rng.choice(keys).capitalize())
        else:
            words.append(rng.choice(keys))
    return words


def make_samples(keys: list[str], num: int, rng: random.Random) -> tuple[dict, dict]:
    """OV-MERD+-like samples: GT cells "['Word', ...]" (1-4 words), predictions "w1, w2" (1-6,
    10% unknown and 10% capitalised words)."""
    gts, preds = {}, {}
    for i in range(num):
        gts[f"sample_{i:05d}"] = str([w.title() for w in rng.sample(keys, rng.randint(1, 4))])
        preds[f"sample_{i:05d}"] = ", ".join(make_words(keys, rng.randint(1, 6), rng, capitalised=0.1))
    return gts, preds


def on_the_fly_mapper() -> Callable[[str], tuple]:
    """Steps 2-4 per word from the raw maps, no precomputed table (for comparison)."""
    format_map = json.loads((ASSET_DIR / "format_map.json").read_text(encoding="utf-8"))
    synonym_map = json.loads((ASSET_DIR / "synonym_map.json").read_text(encoding="utf-8"))
    wheel_maps = [build_wheel_map(rows) for rows in read_wheel_rows()]

    def map_word(word: str) -> tuple:
        names = format_map.get(word.lower().strip(), ())
        candidates = sorted(w for name in names for w in synonym_map[name])
        return tuple(next((m[w] for w in candidates if w in m), None) for m in wheel_maps)

    return map_word


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-words", type=int, default=1_000_000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)

    def reset_load_cache() -> None:
        EmotionWheels._instance = None

    rows = []
    rows.append(("pure-Python loop, 10M additions (machine scale)", *best_time(python_loop, 3)))
    rows.append(("EmotionWheels.load() (shipped table, cold)", *best_time(EmotionWheels.load, args.repeats, reset_load_cache)))
    rows.append(("EmotionWheels.from_raw_maps() (rebuild table)", *best_time(EmotionWheels.from_raw_maps, 3)))
    wheels = EmotionWheels.load()
    keys = sorted(wheels.table)

    words = make_words(keys, args.num_words, rng)
    n = f"{args.num_words / 1e6:g}M"
    map_many = best_time(lambda: wheels.map_many(words), args.repeats)
    rows.append((f"map_many: {n} words x 5 wheels", *map_many))
    mixed = make_words(keys, args.num_words, rng, capitalised=0.1)
    rows.append((f"map_many: {n} words, 10% capitalised (fallback)", *best_time(lambda: wheels.map_many(mixed), args.repeats)))
    rows.append((f"map_word loop: {n} words x 5 wheels", *best_time(lambda: [wheels.map_word(w) for w in words], 3)))
    lists = [words[i : i + 3] for i in range(0, len(words), 3)]
    rows.append((f"map_masks: {n} words in lists of 3", *best_time(lambda: list(map(wheels.map_masks, lists)), 3)))
    fly = on_the_fly_mapper()
    few = words[:100_000]
    cpu, wall = best_time(lambda: [fly(w) for w in few], 1)
    scale = args.num_words / len(few)
    rows.append((f"no table (steps 2-4 per word): {n} words, scaled from 100k", cpu * scale, wall * scale))

    gts, preds = make_samples(keys, args.num_samples, rng)
    labels = {name: rng.choice(["happy", "sad", "angry", "neutral", "surprise", "worried"]) for name in gts}
    sentiment_gts = {name: rng.choice([-2.0, -0.4, 0.0, 0.6, 1.8]) for name in gts}
    sentiment_preds = {name: rng.choice(["positive", "negative", "neutral"]) for name in gts}
    clear = score_module._SAMPLE_SCORES.clear  # cold per-sample score cache on every run
    m = args.num_samples
    score = best_time(lambda: score_ovmerd(preds, gts), args.repeats * 4, clear)
    rows.append((f"score_ovmerd: {m} samples", *score))
    rows.append((f"score_hitrate: {m} samples", *best_time(lambda: score_hitrate(preds, labels), args.repeats * 4, clear)))
    rows.append((f"score_sentiment: {m} samples", *best_time(lambda: score_sentiment(sentiment_preds, sentiment_gts), args.repeats * 4)))

    print(f"# emotion-wheel benchmark: Python {platform.python_version()}, {platform.machine()}, "
          f"{len(keys)} table words, module {emotion_wheel.__name__}")
    print("| operation | CPU time | wall time |")
    print("|---|---|---|")
    for name, cpu, wall in rows:
        unit, factor = ("ms", 1e3) if cpu < 1 else ("s", 1)
        print(f"| {name} | {cpu * factor:.3g} {unit} | {wall * factor:.3g} {unit} |")
    print(f"\nwords mapped per second (map_many, all 5 wheels): {args.num_words / map_many[0] / 1e6:.2f} M (CPU), "
          f"{args.num_words / map_many[1] / 1e6:.2f} M (wall)")
    print(f"targets: 1M words x 5 wheels < 0.25 s: {'met' if map_many[0] * 1e6 / args.num_words < 0.25 else 'NOT met'} "
          f"(CPU); 1,000 samples < 10 ms: {'met' if score[0] * 1000 / m < 0.010 else 'NOT met'} (CPU)")


if __name__ == "__main__":
    main()
