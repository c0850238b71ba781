"""Rollout sampling speed on CPU: merr1's sampler vs ``transformers`` ``generate``.

Same tiny model, prompts, media and settings for both; 1 thread; every row generates exactly
``--new-tokens`` tokens (no EOS/stop), so both do identical work apart from how they do it
(``transformers`` prefills each of the G copies of a prompt, merr1 prefills it once).
Reports generated tokens per second of process CPU time (``time.process_time``; with 1 thread
that is the run time on an idle core, and it is robust to the shared sandbox's other load),
median of ``--repeats`` runs after one warm-up, the two samplers interleaved run by run.

    python benchmarks/bench_generation.py            # full table (~1-2 min)
    python benchmarks/bench_generation.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merr1.components.generation import SamplingConfig, generate  # noqa: E402
from merr1.components.models import tiny_qwen2, tiny_thinker  # noqa: E402
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS as S  # noqa: E402


def thinker_prompts(model, num_prompts: int, audio_frames: int = 200, video_grid=(2, 8, 8), text_len: int = 24):
    """Left-padded Thinker prompts with one audio and one video each (text lengths differ)."""
    gen = torch.Generator().manual_seed(0)
    num_audio = int(model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(audio_frames))[1])
    t, h, w = video_grid
    rows = []
    for b in range(num_prompts):
        text = torch.randint(10, 500, (text_len - b % 4,), generator=gen).tolist()
        rows.append(
            [S["<|im_start|>"], S["<|audio_bos|>"]] + [S["<|AUDIO|>"]] * num_audio + [S["<|audio_eos|>"]]
            + [S["<|vision_bos|>"]] + [S["<|VIDEO|>"]] * (t * h * w // 4) + [S["<|vision_eos|>"]] + text
        )
    ids, mask = left_pad(rows)
    media = dict(
        input_features=torch.randn(num_prompts, 16, audio_frames, generator=gen),
        feature_attention_mask=torch.ones(num_prompts, audio_frames, dtype=torch.long),
        pixel_values_videos=torch.randn(num_prompts * t * h * w, 3 * 2 * 14 * 14, generator=gen),
        video_grid_thw=torch.tensor([video_grid] * num_prompts),
        video_second_per_grid=torch.ones(num_prompts),
    )
    return ids, mask, media


def text_prompts(num_prompts: int, text_len: int = 48):
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 500, (text_len - 3 * (b % 4),), generator=gen).tolist() for b in range(num_prompts)]
    return left_pad(rows) + (None,)


def left_pad(rows):
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = torch.tensor(row)
        mask[b, width - len(row):] = 1
    return ids, mask


def run_merr1(model, ids, mask, media, num_samples, new_tokens, greedy, decode_backend="eager"):
    config = SamplingConfig(
        max_new_tokens=new_tokens, temperature=0.0 if greedy else 1.0, decode_backend=decode_backend
    )
    gen = torch.Generator().manual_seed(0)
    out = generate(model, ids, mask, config, num_samples=num_samples, media=media, generator=gen)
    assert out.response_ids.shape == (len(ids) * num_samples, new_tokens)


def run_hf(model, ids, mask, media, num_samples, new_tokens, greedy):
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    out = model.generate(
        input_ids=ids, attention_mask=mask, **(media or {}), max_new_tokens=new_tokens,
        num_return_sequences=num_samples, eos_token_id=None, pad_token_id=0, **sampling,
    )
    assert out.shape == (len(ids) * num_samples, ids.shape[1] + new_tokens)


def median_seconds(fns, repeats: int) -> list[float]:
    """Median CPU seconds of each function, run interleaved (a, b, a, b, ...) after a warm-up."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            start = time.process_time()
            fn()
            fn_times.append(time.process_time() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 8 new tokens")
    parser.add_argument(
        "--decode-backend", default="eager", choices=("eager", "static"),
        help="merr1's decode step on CPU: eager (default, fastest on CPU) or static (the CUDA-graph code, eagerly)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 8
    torch.set_num_threads(1)
    models = {"tiny Thinker (audio+video)": tiny_thinker().eval(), "tiny Qwen2 (text)": tiny_qwen2().eval()}
    # (mode, prompts B, samples G)
    settings = [("greedy", 8, 1), ("sample T=1", 2, 8), ("sample T=1", 8, 4)]
    print(
        f"new tokens per row: {args.new_tokens}; merr1 decode backend {args.decode_backend}; "
        f"median of {args.repeats} (CPU time); "
        f"torch {torch.__version__}, 1 thread"
    )
    header = "| model | mode | B x G | prompt len | merr1 tok/s | transformers tok/s | speed-up |"
    print(header)
    print("|" + "---|" * 7)
    for name, model in models.items():
        for mode, num_prompts, num_samples in settings:
            ids, mask, media = thinker_prompts(model, num_prompts) if "Thinker" in name else text_prompts(num_prompts)
            greedy = mode == "greedy"
            call = (model, ids, mask, media, num_samples, args.new_tokens, greedy)
            ours, theirs = median_seconds(
                [lambda: run_merr1(*call, args.decode_backend), lambda: run_hf(*call)], args.repeats
            )
            num_tokens = num_prompts * num_samples * args.new_tokens
            print(
                f"| {name} | {mode} | {num_prompts} x {num_samples} | {ids.shape[1]} | {num_tokens / ours:,.0f} | "
                f"{num_tokens / theirs:,.0f} | {theirs / ours:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
