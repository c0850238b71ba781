"""GRPO rollouts per second per GPU: the MER-R1 recipe on a 7B-shaped Thinker with random weights.

Runs the GRPO recipe class (``recipes.grpo_mer_r1_distributed.GRPORecipe``) in-process, one GPU,
on a synthetic in-memory data set: every prompt is a MER-R1 slow-thinking prompt (Qwen system
prompt, MER-R1 instruction, a short subtitle) with one audio clip and one video of the real
Thinker's input shapes (128 mel bins; video patches 3 x 2 x 14 x 14, merge 2), ~1k prompt tokens
including the media placeholders. Each step: G = 4 responses of 256 tokens per prompt, the MER-R1
rewards (recall, precision, strict format, SFCC calibration with its two no-grad forwards) and
advantage groups of ``recipes/configs/debug/grpo_mer_r1_tiny.yaml``, beta = 0, one update.
Reports rollouts per second (completions per second of step wall time, median over the measured
steps) and the recipe's own time split (generate / calibrate / score / train); "rollout phase
rollouts/s" = rollouts / generate time. Targets: >= 1 rollout/s/GPU on one H100 (issue 6; the
paper's run implies about 0.1-0.4), >= 1.5 (issue 17). ``--decode-backend`` picks the rollout
decode step (default ``auto``: CUDA graphs on a GPU).

    python benchmarks/bench_grpo_gpu.py                        # 7B shape, one GPU (H100/H200)
    python benchmarks/bench_grpo_gpu.py --prompts-per-step 8   # less memory
    python benchmarks/bench_grpo_gpu.py --tiny                 # CPU smoke test of the code path
    python benchmarks/bench_grpo_gpu.py --tiny --real-vocab    # same, real-size tokenizer and vocabulary

What differs from a production run, and why:
- Weights are random (no download is possible); the stop tokens and stop strings are suppressed
  (``BenchGRPORecipe.setup``) so every response is sampled to the full 256 tokens. After sampling, each response's first tokens are
  overwritten with ``<think>`` and its last ones with ``</think><answer>words</answer>`` + EOS
  (``BenchGRPORecipe._rollout``), so rewards, the calibration's answer-word location and its
  fast-thinking forward see well-formed answers, as with a trained policy. The sampling work is
  unchanged.
- The tokenizer is synthetic (``synthetic_qwen_tokenizer``): a byte-level BPE with the real
  vocabulary size and the real Qwen2.5-Omni special-token ids (151643...), so decoding, stop
  strings and answer location run over a real-sized vocabulary. The model config is
  ``qwen2_5_omni_thinker_config`` plus the vision start/end token ids it lacks
  (``thinker_config``; without them every video prompt fails in the Thinker's mRoPE index).
- Parameters, gradients and AdamW states are bf16 (8 bytes per trained parameter) and the audio
  and vision encoders are frozen (``--train-encoders`` to train them), with full activation
  checkpointing: a 7B fits one 80 GB GPU. The recipe's own bf16 mode keeps fp32 master weights
  (16 bytes per parameter) and needs FSDP2 over several GPUs; rollouts/s per GPU are about the
  same either way (the same FLOPs per rollout per GPU), apart from FSDP2's communication.
  ``BenchGRPORecipe`` overrides only ``_build_model`` for this, and adds a CUDA synchronize at
  the end of the rollout, calibration and update phases so that the recipe's time split
  charges each phase its own GPU work.

Prompt length: system + instruction + subtitle text (synthetic BPE: ~2-3 characters per token)
+ audio placeholders (``--audio-seconds`` x 100 mel frames -> frames/4 tokens) + video
placeholders (``--video-grid`` t h w -> t*h*w/4 tokens; the default 4 x 24 x 24 is 8 frames at
2 fps of 336 x 336 pixels, a 4-second clip). Defaults: 100 audio + 576 video + ~370 text tokens
= ~1,047 prompt tokens (the table prints the measured mean).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # our `recipes` package, not the one in torchtune's wheel
# The config's `_component_` paths name this module; make it importable however it was loaded.
sys.modules.setdefault("bench_grpo_gpu", sys.modules[__name__])

from merr1.components.data.prompts import PromptEncoder, encode_pieces, num_audio_tokens, num_video_tokens  # noqa: E402

DEBUG_CONFIG = REPO_ROOT / "recipes" / "configs" / "debug" / "grpo_mer_r1_tiny.yaml"
# The real Qwen2.5-Omni special tokens, in id order from QWEN_FIRST_SPECIAL_ID.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>",
    "<|IMAGE|>", "<|VIDEO|>",
)  # fmt: skip
QWEN_FIRST_SPECIAL_ID = 151_643
SUBTITLE_WORDS = (
    "I", "really", "did", "not", "expect", "you", "to", "come", "back", "so", "soon", "and", "now", "we",
    "have", "to", "talk", "about", "what", "happened", "last", "night", "at", "the", "party",
)  # fmt: skip
ANSWER_WORDS = ("happy", "surprised", "worried", "sad", "angry", "calm")
STEP_TIMES = ("generate", "calibrate", "score", "train")
LOGGED_REWARDS = ("recall", "precision", "format", "cali_pos", "cali_neg")
log = logging.getLogger("bench_grpo_gpu")


# ------------------------------------------------------------------------------------ tokenizer
def synthetic_qwen_tokenizer(num_regular_tokens: int = QWEN_FIRST_SPECIAL_ID):
    """A byte-level BPE ``Qwen2Tokenizer`` with the real Qwen2.5-Omni vocabulary layout.

    Regular tokens: the 256 byte symbols, then every (token, byte) merge level by level
    (alphanumeric ASCII first) until ``num_regular_tokens``; then ``QWEN_SPECIAL_TOKENS`` at
    ids ``num_regular_tokens``... (151643... by default, as in the real tokenizer). eos =
    ``<|im_end|>``, pad = ``<|endoftext|>``.
    """
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: (not (c.isascii() and c.isalnum()), c))
    if num_regular_tokens < len(alphabet):
        raise ValueError(f"num_regular_tokens must be >= {len(alphabet)} (the byte alphabet), got {num_regular_tokens}")
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    frontier = list(alphabet)
    while len(vocab) < num_regular_tokens:
        next_frontier = []
        for left in frontier:
            for right in alphabet:
                if len(vocab) == num_regular_tokens:
                    break
                token = left + right
                if token not in vocab:
                    vocab[token] = len(vocab)
                    merges.append((left, right))
                    next_frontier.append(token)
        frontier = next_frontier
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        vocab[token] = num_regular_tokens + offset
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]}
    )
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == num_regular_tokens + offset, token
    return tokenizer


def thinker_config(size: str = "7B"):
    """``qwen2_5_omni_thinker_config(size)`` plus the vision start/end token ids it lacks.

    The Thinker's mRoPE index reads ``config.vision_start_token_id`` for every video prompt;
    transformers' ``Qwen2_5OmniThinkerConfig`` has no such field (real checkpoints carry it in
    config.json), so without it a video prompt fails with AttributeError.
    """
    from merr1.components.models import qwen2_5_omni_thinker_config

    config = qwen2_5_omni_thinker_config(size)
    first = QWEN_FIRST_SPECIAL_ID
    config.vision_start_token_id = first + QWEN_SPECIAL_TOKENS.index("<|vision_bos|>")
    config.vision_end_token_id = first + QWEN_SPECIAL_TOKENS.index("<|vision_eos|>")
    return config


def random_thinker(size: str = "7B", seed: int = 0, dtype: torch.dtype | str = torch.bfloat16, device="cpu"):
    """YAML builder: a real-shape Thinker with random weights (``thinker_config``)."""
    from merr1.components.models import build_model

    return build_model(thinker_config(size), dtype=dtype, device=device, seed=seed)


def tiny_thinker_real_vocab(seed: int = 0, dtype: torch.dtype | str = torch.float32, device="cpu"):
    """YAML builder: the tiny Thinker with the real vocabulary size and special-token ids
    (``--tiny --real-vocab``: a CPU smoke test of the real-size tokenizer path)."""
    from merr1.components.models import build_model, tiny_thinker_config

    real = thinker_config("7B")
    config = tiny_thinker_config(vocab_size=real.text_config.vocab_size)
    for name in ("audio_token_index", "image_token_index", "video_token_index", "audio_start_token_id",
                 "audio_end_token_id", "vision_start_token_id", "vision_end_token_id"):  # fmt: skip
        setattr(config, name, getattr(real, name))
    return build_model(config, dtype=dtype, device=device, seed=seed)


def benchmark_tokenizer(tiny: bool = False):
    """YAML builder: the tiny tokenizer (``--tiny``) or the synthetic real-sized one."""
    from merr1.components.tokenizer import tiny_tokenizer

    return tiny_tokenizer() if tiny else synthetic_qwen_tokenizer()


# ------------------------------------------------------------------------------------ data
def synthetic_media(
    num_mel_bins: int, audio_frames: int, video_grid: tuple[int, int, int], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One sample's Thinker media kwargs in the media-cache layout (bf16 features, see merr1.components.data.media)."""
    t, h, w = video_grid
    return {
        "input_features": torch.randn(1, num_mel_bins, audio_frames, generator=generator).to(torch.bfloat16),
        "feature_attention_mask": torch.ones(1, audio_frames, dtype=torch.long),
        "pixel_values_videos": torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator).to(torch.bfloat16),
        "video_grid_thw": torch.tensor([[t, h, w]], dtype=torch.long),
        "video_second_per_grid": torch.tensor([1.0]),  # temporal patch of 2 frames at 2 fps
    }


class SyntheticRLDataset(Dataset):
    """In-memory RL samples shaped like ``MERCaptionPlusDataset(mode="rl")`` items.

    Each item: ``name``, ``prompt_ids`` (the MER-R1 slow prompt with the Qwen system prompt, one
    audio and one video block), ``labels`` (1-3 emotion words) and ``media`` (random tensors).

    Args:
        tokenizer: tokenizer with the Qwen special tokens.
        num_prompts: data set size.
        audio_frames: mel frames per clip (100 per second).
        video_grid: video patch grid (t, h, w).
        num_mel_bins: 128 for the real Thinker, 16 for the tiny one.
        subtitle_words: words per subtitle.
        seed: media and label seed.
    """

    def __init__(
        self,
        tokenizer,
        num_prompts: int,
        audio_frames: int,
        video_grid: tuple[int, int, int],
        num_mel_bins: int,
        subtitle_words: int = 20,
        seed: int = 0,
    ):
        self.encoder = encoder = PromptEncoder(tokenizer)  # the recipe reads encoder.prompts (re-checks)
        self.video_grid = tuple(int(x) for x in video_grid)
        self.num_audio = num_audio_tokens(audio_frames)
        self.num_video = num_video_tokens(self.video_grid)
        generator = torch.Generator().manual_seed(seed)
        self.items: list[dict[str, Any]] = []
        for i in range(num_prompts):
            order = torch.randperm(len(SUBTITLE_WORDS), generator=generator).tolist()
            subtitle = " ".join(SUBTITLE_WORDS[j] for j in (order * subtitle_words)[:subtitle_words])
            num_labels = 1 + i % 3
            labels = [ANSWER_WORDS[(i + k) % len(ANSWER_WORDS)] for k in range(num_labels)]
            self.items.append(
                {
                    "name": f"synthetic_{i:05d}",
                    "prompt_ids": torch.tensor(encoder.encode(subtitle, self.num_audio, self.num_video)),
                    "labels": labels,
                    "media": synthetic_media(num_mel_bins, audio_frames, self.video_grid, generator),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def synthetic_dataset(tokenizer, **kwargs) -> SyntheticRLDataset:
    """YAML builder (the recipe calls ``instantiate(cfg.dataset, tokenizer)``)."""
    return SyntheticRLDataset(tokenizer, **kwargs)


# ------------------------------------------------------------------------------------ recipe
def _recipe_class():
    from recipes.grpo_mer_r1_distributed import GRPORecipe

    from merr1.components import parallel
    from merr1.components.models import multimodal_encoders

    class BenchGRPORecipe(GRPORecipe):
        """The GRPO recipe with a single-GPU bf16 model and well-formed answers (module docstring)."""

        train_encoders = False
        decode_backend = "auto"

        def _bench_model(self, spec, *, role: str, device, sharded: bool) -> torch.nn.Module:
            """Replaces ``training.build_model`` during setup: bf16 parameters on the device (no
            float32 master copy: the 7B state then fits one GPU), frozen encoders unless asked."""
            if self._world_size > 1:
                raise ValueError("bench_grpo_gpu measures one device; launch it without torchrun")
            model = spec.builder(dtype=self._dtype, device=device)
            if not self.train_encoders:
                for encoder in multimodal_encoders(model):
                    encoder.requires_grad_(False)
            if role == "train" and spec.activation_checkpointing:
                parallel.apply_activation_checkpointing(model)
            if spec.compile:
                parallel.compile_decoder_layers(model)
            if role != "train":
                model.requires_grad_(False)
                model.eval()
            return model

        def setup(self, cfg) -> None:
            from merr1.components import training

            original, training.build_model = training.build_model, self._bench_model
            try:
                super().setup(cfg)
            finally:
                training.build_model = original
            # Random weights: the stop tokens and strings are never sampled, so every response runs
            # to max_new_tokens and every step measures the same work (a real policy stops earlier).
            stops = self._sampling.eos_token_ids
            self._sampling = dataclasses.replace(
                self._sampling, stop_strings=None, suppress_token_ids=[*self._sampling.suppress_token_ids, *stops],
                decode_backend=self.decode_backend,
            )  # fmt: skip

        def _rollout(self, batch):
            rollout = super()._rollout(batch)
            write_answers(rollout, self._tokenizer, self._group_size)
            _synchronize(self._device)
            return dataclasses.replace(rollout, texts=self._decode(rollout.response_ids, rollout.response_mask))

        def _rollout_policy_pass(self, rollout):
            out = super()._rollout_policy_pass(rollout)
            _synchronize(self._device)
            return out

        def _policy_update(self, *args, **kwargs):
            out = super()._policy_update(*args, **kwargs)
            _synchronize(self._device)
            return out

    return BenchGRPORecipe


def write_answers(rollout, tokenizer, group_size: int) -> None:
    """Overwrite each response's head with ``<think>`` and its tail with
    ``</think><answer>words</answer>`` + EOS, in place (lengths unchanged).

    Sample g of prompt b answers the first ``1 + g % 3`` of that prompt's labels, plus "calm" for
    odd g (so rewards differ within a group). Rows too short for head + tail are left as sampled.
    """
    ids, mask = rollout.response_ids, rollout.response_mask  # [R, T]
    head = encode_pieces(tokenizer, ["<think>"])
    lengths = mask.sum(-1).tolist()
    for row, length in enumerate(lengths):
        b, g = divmod(row, group_size)
        words = list(rollout.labels[b][: 1 + g % 3]) + (["calm"] if g % 2 else [])
        tail = encode_pieces(tokenizer, ["</think><answer>", ", ".join(words), "</answer>"]) + [tokenizer.eos_token_id]
        if length < len(head) + len(tail):
            continue
        ids[row, : len(head)] = torch.tensor(head, device=ids.device)
        ids[row, length - len(tail) : length] = torch.tensor(tail, device=ids.device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(args: argparse.Namespace, output_dir: Path):
    """The debug MER-R1 GRPO config with the benchmark's model, data and sizes."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(DEBUG_CONFIG)
    num_prompts = (args.warmup + args.steps) * args.prompts_per_step
    if args.tiny and args.real_vocab:
        model = {"_component_": "bench_grpo_gpu.tiny_thinker_real_vocab", "seed": 0}
    elif args.tiny:
        model = {"_component_": "merr1.components.models.tiny_thinker", "seed": 0}
    else:
        model = {"_component_": "bench_grpo_gpu.random_thinker", "size": args.size, "seed": 0}
    overrides = {
        "output_dir": str(output_dir),
        "device": args.device,
        "dtype": "fp32" if args.tiny else "bf16",
        "checkpoint_dir": None,
        "batch_size": args.micro_batch_prompts,
        "gradient_accumulation_steps": args.prompts_per_step // args.micro_batch_prompts,
        "num_generations": args.num_generations,
        "num_iterations": 1,
        "epochs": 1,
        "max_steps_per_epoch": args.warmup + args.steps,
        "shuffle": False,
        "enable_activation_checkpointing": not args.tiny and args.ac,
        "compile": args.compile,
        "log_samples_every_n_steps": 10**6,
        "optimizer": {"lr": 2e-6},  # the paper's
    }
    cfg = OmegaConf.merge(cfg, overrides)
    # Whole nodes replaced (a merge would keep the debug config's other keys).
    cfg.tokenizer = {"_component_": "bench_grpo_gpu.benchmark_tokenizer", "tiny": args.tiny and not args.real_vocab}
    cfg.model = model
    cfg.dataset = {
        "_component_": "bench_grpo_gpu.synthetic_dataset",
        "num_prompts": num_prompts,
        "audio_frames": args.audio_frames,
        "video_grid": list(args.video_grid),
        "num_mel_bins": 16 if args.tiny else 128,
        "subtitle_words": args.subtitle_words,
    }
    cfg.generation.max_new_tokens = args.new_tokens
    cfg.loss.beta = 0.0
    return cfg


# ------------------------------------------------------------------------------------ run
@dataclass
class Result:
    rollouts_per_s: float
    step_s: float
    split_s: dict[str, float]  # STEP_TIMES -> median seconds
    rollouts_per_step: int
    prompt_tokens: float
    response_tokens: float
    generated_tokens_per_s: float
    peak_memory_gb: float
    step_times_s: list[float] = field(default_factory=list)
    step_log: list[dict[str, Any]] = field(default_factory=list)  # every step, warm-up included
    rewards: dict[str, float] = field(default_factory=dict)  # mean over the measured steps


def run(args: argparse.Namespace) -> Result:
    """Build the recipe, run warm-up + measured steps (the body of ``GRPORecipe.train``)."""
    from merr1.components.checkpointing import DataPosition

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_grpo_gpu_") as tmp:
        cfg = bench_config(args, Path(tmp))
        recipe_class = _recipe_class()
        recipe_class.train_encoders = args.train_encoders
        recipe_class.decode_backend = args.decode_backend
        recipe = recipe_class(cfg)
        recipe.setup(cfg)
        batches = (batch for _, (batch,) in recipe._loader.steps(DataPosition()))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps: list[dict[str, float]] = []
        step_log: list[dict[str, Any]] = []  # every step, warm-up included
        prompt_tokens = []
        for step in range(args.warmup + args.steps):
            _synchronize(device)
            start = time.perf_counter()
            batch = next(batches)
            metrics = recipe._grpo_step(batch)
            recipe._position = DataPosition(0, step + 1, step + 1)
            recipe._run.metric_logger.log(step + 1, metrics)
            _synchronize(device)
            metrics["wall"] = time.perf_counter() - start
            log.info("step %d: %.2f s, %s", step + 1, metrics["wall"],
                     {k: round(metrics[f"time/{k}"], 3) for k in STEP_TIMES})  # fmt: skip
            prompt_tokens.append(float(batch["prompt_mask"].sum(-1).float().mean()))
            if step >= args.warmup:
                steps.append(metrics)
            step_log.append({"step": step + 1, "warmup": step < args.warmup, "wall": metrics["wall"],
                             **{name: metrics[f"time/{name}"] for name in STEP_TIMES}})  # fmt: skip
            if args.json is not None:  # per step: a run stopped by a time limit keeps what finished
                record = {"partial": True, "rollouts_per_step": args.prompts_per_step * args.num_generations}
                args.json.write_text(json.dumps({**record, "step_log": step_log}, indent=2) + "\n")
        recipe.cleanup()
    rollouts = args.prompts_per_step * args.num_generations
    step_s = statistics.median(m["wall"] for m in steps)
    return Result(
        rollouts_per_s=rollouts / step_s,
        step_s=step_s,
        split_s={k: statistics.median(m[f"time/{k}"] for m in steps) for k in STEP_TIMES},
        rollouts_per_step=rollouts,
        prompt_tokens=statistics.mean(prompt_tokens),
        response_tokens=statistics.mean(m["response_length/mean"] for m in steps),
        generated_tokens_per_s=statistics.median(m["rollout_tokens_per_second"] for m in steps),
        peak_memory_gb=torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan"),
        step_times_s=[m["wall"] for m in steps],
        step_log=step_log,
        rewards={name: statistics.mean(m[f"reward/{name}/mean"] for m in steps) for name in LOGGED_REWARDS},
    )


def format_table(result: Result) -> str:
    split = " | ".join(f"{result.split_s[k]:.2f}" for k in STEP_TIMES)
    return "\n".join(
        [
            "| rollouts/s | rollout phase rollouts/s | step (s) | generate (s) | calibrate (s) | score (s) | train (s) "
            "| rollouts/step | prompt tok | response tok | gen tok/s | peak mem (GB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {result.rollouts_per_s:.2f} | {result.rollouts_per_step / result.split_s['generate']:.2f} | "
            f"{result.step_s:.2f} | {split} | {result.rollouts_per_step} | "
            f"{result.prompt_tokens:.0f} | {result.response_tokens:.0f} | {result.generated_tokens_per_s:,.0f} | "
            f"{result.peak_memory_gb:.1f} |",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7B", choices=("3B", "7B"), help="real Thinker shape")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="prompts per optimizer step (x G rollouts)")
    parser.add_argument("--micro-batch-prompts", type=int, default=2, help="prompts per training micro-batch")
    parser.add_argument("--num-generations", type=int, default=4, help="G")
    parser.add_argument("--new-tokens", type=int, default=256, help="max new tokens (all are sampled: random weights)")
    parser.add_argument("--audio-seconds", type=float, default=4.0, help="audio clip length (100 mel frames/s)")
    parser.add_argument("--video-grid", type=int, nargs=3, default=(4, 24, 24), metavar=("T", "H", "W"))
    parser.add_argument("--subtitle-words", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--no-ac", dest="ac", action="store_false", help="no activation checkpointing")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    parser.add_argument(
        "--decode-backend", default="auto", choices=("auto", "eager", "static", "cuda_graph"),
        help="rollout decode step (auto: CUDA graphs on a GPU, eager on CPU)",
    )  # fmt: skip
    parser.add_argument("--train-encoders", action="store_true", help="also train the audio/vision encoders")
    parser.add_argument("--tiny", action="store_true", help="tiny Thinker on CPU: smoke test of the code path")
    parser.add_argument(
        "--real-vocab", action="store_true", help="with --tiny: the real-size synthetic tokenizer and vocabulary"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.tiny:
        tiny = dict(prompts_per_step=2, micro_batch_prompts=1, new_tokens=32, audio_seconds=2.0,
                    video_grid=(2, 8, 8), subtitle_words=6, steps=1, warmup=1)  # fmt: skip
        for key, value in tiny.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.real_vocab and not args.tiny:
        parser.error("--real-vocab is a --tiny option (the full model always has the real vocabulary)")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.prompts_per_step % args.micro_batch_prompts:
        parser.error("--prompts-per-step must be a multiple of --micro-batch-prompts")
    args.audio_frames = int(round(args.audio_seconds * 100))
    args.video_grid = tuple(args.video_grid)
    args.device = "cpu" if args.tiny else "cuda"
    return args


def main(argv: list[str] | None = None) -> Result:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or run with --tiny on CPU)")
    result = run(args)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"GRPO MER-R1 recipe, Thinker {'tiny' if args.tiny else args.size} (random weights) on {device_name}, "
        f"torch {torch.__version__}; {args.prompts_per_step} prompts x G={args.num_generations} per step, "
        f"micro-batch {args.micro_batch_prompts} prompts, {args.new_tokens} new tokens, audio {args.audio_frames} "
        f"frames, video grid {args.video_grid}, AC {'on' if args.ac and not args.tiny else 'off'}, "
        f"compile {'on' if args.compile else 'off'}, decode backend {args.decode_backend}; "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(format_table(result))
    print("mean rewards (written answers): " + ", ".join(f"{k} {v:.3f}" for k, v in result.rewards.items()))
    if args.json is not None:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, **asdict(result)}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
