"""Reward scoring speed: 4,096 responses (1,024 prompts x G = 4) on one CPU thread.

Measures every reward component that needs no model pass (the calibration reward from
precomputed per-word gaps), the advantage groups, and each variant's total, against the targets
of < 100 ms: the MER-R1 total (set rewards + format + calibration rewards + advantages; issue 3)
and "all VideoAuto-R1 rewards" (early/final answers with the official parsing, the official format
check and the advantage group: the ``total VideoAuto-R1`` row; issue 13). Also times the
tokenizer-side calibration step (``locate_answer_words``) for information: it belongs to the
model-pass part of the pipeline.

Usage: ``python benchmarks/bench_rewards.py [--num-prompts 1024] [--group-size 4] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from merr1.components.advantages import AdvantageGroups
from merr1.components.calibration import CalibrationInputs, CategoryFirstTokens, locate_answer_words
from merr1.components.emotion_wheel import EmotionWheels
from merr1.rewards import (
    CalibrationRewards,
    EmotionSetRewards,
    F1Reward,
    FormatReward,
    PrecisionReward,
    RecallReward,
    RewardBatch,
    VideoAutoAnswerRewards,
)

WORDS = [
    "happy", "sad", "angry", "surprised", "worried", "anxious", "calm", "frustrated", "excited",
    "nervous", "disappointed", "confused", "joyful", "fearful", "disgusted", "relaxed", "xyz",
]
REASONING = (
    "The woman in the video raises her eyebrows and her voice trembles slightly while she talks "
    "about the exam; the subtitle says she is not sure she passed, and the background is quiet. "
)
BASELINE_GROUPS = [{"name": "base", "rewards": {"f1": 1.0, "format": 1.0}}]
DEMO_GROUPS = [{"name": "total", "rewards": {"recall": 1.0, "precision": 1.0, "format": 0.1}}]
MER_R1_GROUPS = [
    {"name": "recall", "weight": 1.0, "rewards": {"recall": 1.0}},
    {"name": "precision", "weight": 1.0, "rewards": {"precision": 1.0}},
    {"name": "cali_pos", "weight": 0.1, "rewards": {"cali_pos": 1.0}},
    {"name": "cali_neg", "weight": 0.1, "rewards": {"cali_neg": 1.0}},
    {"name": "format", "weight": 0.1, "rewards": {"format": 1.0}},
]


def make_batch(num_prompts: int, group_size: int, seed: int = 0) -> tuple[RewardBatch, RewardBatch]:
    """A MER-R1-style batch and a VideoAuto-R1-style batch with the same labels."""
    rng = random.Random(seed)
    extra = random.Random(seed + 1)  # VideoAuto-R1 variations: the MER-R1 batch stays as before
    labels, slow, boxed = [], [], []
    for _ in range(num_prompts):
        labels.append(rng.sample(WORDS[:-1], rng.randint(0, 3)))
        group, group_boxed = [], []
        for _ in range(group_size):
            answer = ", ".join(rng.sample(WORDS, rng.randint(0, 4)))
            reasoning = REASONING * rng.randint(1, 4)
            group.append(f"<think>{reasoning}</think><answer>{answer}</answer>")
            # VideoAuto-R1: a quarter decline the early answer (the bonus path), some reason with a box
            early = "Let's analyze the problem step by step." if extra.random() < 0.25 else answer
            aside = r" so maybe \boxed{sad}" if extra.random() < 0.1 else ""
            group_boxed.append(rf"\boxed{{{early}}}<think>{reasoning}{aside}</think>\boxed{{{answer}}}")
        slow.append(group)
        boxed.append(group_boxed)
    return RewardBatch(responses=slow, labels=labels), RewardBatch(responses=boxed, labels=labels)


def fake_calibration_inputs(batch: RewardBatch, seed: int = 0) -> CalibrationInputs:
    """Per-word gaps for every answer word (what the recipe computes with the model passes)."""
    wheels = EmotionWheels.load()
    g = torch.Generator().manual_seed(seed)
    index, masks = [], []
    for b, group in enumerate(batch.responses):
        for j, response in enumerate(group):
            answer = response[response.rfind("<answer>") + 8 : response.rfind("</answer>")]
            for word in [w.strip() for w in answer.split(",") if w.strip()]:
                index.append(b * batch.group_size + j)
                masks.append(wheels.map_masks([word]))
    return CalibrationInputs(
        response_index=torch.tensor(index, dtype=torch.int64),
        category_mask=torch.tensor(masks, dtype=torch.int64).reshape(-1, 5),
        gap=torch.randn(len(index), 5, generator=g),
        num_responses=batch.num_prompts * batch.group_size,
    )


def fresh(batch: RewardBatch) -> RewardBatch:
    """The same batch without the per-batch memo (each timing parses from scratch)."""
    return RewardBatch(responses=batch.responses, labels=batch.labels, extras=batch.extras)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median (CPU time, wall time) in ms. CPU time is what one core spends; on a shared machine
    the wall time also counts waiting for the core."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1e3)
        wall.append((time.perf_counter() - start_wall) * 1e3)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    batch, boxed = make_batch(args.num_prompts, args.group_size)
    batch.extras["calibration"] = fake_calibration_inputs(batch)
    num = args.num_prompts * args.group_size
    EmotionWheels.load()
    advantage = AdvantageGroups(MER_R1_GROUPS)
    recall, precision, f1, fmt = RecallReward(), PrecisionReward(), F1Reward(), FormatReward(strict=False)
    strict_fmt, cali, videoauto = FormatReward(strict=True), CalibrationRewards(), VideoAutoAnswerRewards()
    videoauto_fmt = FormatReward("answer_think_answer")  # VideoAuto-R1's official check (the default)
    rewards = {}
    for out in (EmotionSetRewards()(fresh(batch)), fmt(batch), cali(batch)):
        rewards.update(out.rewards)

    def total(components, groups, data=batch):
        """One training step's reward work for a variant: every component, then the advantages."""
        b = fresh(data)
        out = {}
        for component in components:
            out.update(component(b).rewards)
        AdvantageGroups(groups)(out)

    demo = (RecallReward(duplicate_penalty=True), PrecisionReward(duplicate_penalty=True), strict_fmt)
    rows = [
        ("RecallReward (extract + parse + map + score)", lambda: recall(fresh(batch))),
        ("Recall+Precision+F1 (shared parse)", lambda: [r(b) for b in [fresh(batch)] for r in (recall, precision, f1)]),
        ("FormatReward lenient", lambda: fmt(batch)),
        ("FormatReward strict", lambda: strict_fmt(batch)),
        ("VideoAutoAnswerRewards (official a1/a2 parsing)", lambda: videoauto(boxed)),
        ("FormatReward answer_think_answer (official)", lambda: videoauto_fmt(boxed)),
        (f"CalibrationRewards ({len(batch.extras['calibration'].response_index)} words)", lambda: cali(batch)),
        ("AdvantageGroups (MER-R1, 5 groups)", lambda: advantage(rewards)),
        ("total Baseline: F1, format, advantages", lambda: total((f1, fmt), BASELINE_GROUPS)),
        ("total MER-R1: R, P, format, cali, advantages", lambda: total((recall, precision, fmt, cali), MER_R1_GROUPS)),
        ("total demo: R, P (dup. penalty), strict format", lambda: total(demo, DEMO_GROUPS)),
        (
            "total VideoAuto-R1: answers, format, advantages",
            lambda: total(
                (videoauto, videoauto_fmt),
                [{"name": "a", "rewards": {"early_answer": 0.9, "final_answer": 1.1, "format": 1.0}}],
                boxed,
            ),
        ),
    ]
    print(f"{num} responses ({args.num_prompts} prompts x G={args.group_size}), 1 thread, median of {args.repeats}")
    print(f"{'component':48s} {'cpu ms':>8s} {'wall ms':>8s} {'cpu us/resp':>12s}")
    for name, fn in rows:
        cpu, wall = timed(fn, args.repeats)
        print(f"{name:48s} {cpu:8.1f} {wall:8.1f} {cpu * 1e3 / num:12.2f}")

    from merr1.components.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    table = CategoryFirstTokens(tok)
    flat = [r for group in batch.responses for r in group]
    encoded = tok(flat, add_special_tokens=False)["input_ids"]
    width = max(map(len, encoded))
    ids = torch.zeros(len(encoded), width, dtype=torch.int64)
    mask = torch.zeros(len(encoded), width, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = True
    prefix = "<think></think><answer>"
    cpu, wall = timed(lambda: locate_answer_words(ids, mask, table, fast_prefix=prefix), max(1, args.repeats // 2))
    print(f"{'(model-pass side) locate_answer_words':48s} {cpu:8.1f} {wall:8.1f} {cpu * 1e3 / num:12.2f}")
    print(f"(locate: tiny tokenizer, up to {width} response tokens)")


if __name__ == "__main__":
    main()
