"""Training throughput of a 7B-shaped Qwen2.5-Omni Thinker (random weights) on one GPU.

Measures tokens/s and MFU of full training steps (forward, backward, AdamW step) on text-only
sequences for bf16, float8 tensorwise and float8 rowwise, each with and without per-layer
``torch.compile``, using merr1's own transforms (``merr1.components.parallel``). Targets (issue 5):
float8 >= 1.2x bf16, MFU >= 40% for bf16 + compile at sequence length 4k.

    python benchmarks/bench_train_gpu.py                      # 7B shape, seq 4096, all 6 configs
    python benchmarks/bench_train_gpu.py --configs bf16+compile,float8_tensorwise+compile
    python benchmarks/bench_train_gpu.py --tiny               # CPU smoke test of the code path

FLOPs (model FLOPs, PaLM appendix B / torchtitan convention), per trained token:
    6 * N + 12 * L * H * d_head * S
N = parameters of the LLM decoder layers + lm_head (the matmul weights a text token passes
through; embedding lookups are free, the frozen audio/vision encoders see no text), L layers,
H query heads, d_head head dim, S sequence length. The attention term counts the full S x S
score matrix although causal attention computes about half of it; activation recomputation
(AC) is not counted. MFU = tokens/s * FLOPs per token / the GPU's dense bf16 peak (also for the
float8 rows, whose own peak is 2x).

Set-up choices, so that a 7B fits one 80 GB H100: parameters, gradients and AdamW states in
bf16 (no float32 master copy: 8 bytes per trained parameter, ~61 GB), audio and vision encoders
frozen, full activation checkpointing (``--ac none`` on bigger GPUs), batch 1 x 4096 tokens.
A configuration that fails (out of memory, no float8 hardware) is reported and skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merr1.components.models import (  # noqa: E402
    decoder_layers,
    multimodal_encoders,
    qwen2_5_omni_thinker_random,
    tiny_thinker,
)
from merr1.components.parallel import (  # noqa: E402
    apply_activation_checkpointing,
    apply_float8,
    compile_decoder_layers,
    float8_hardware_supported,
)

logger = logging.getLogger("bench_train_gpu")

CONFIGS = (
    "bf16",
    "bf16+compile",
    "float8_tensorwise",
    "float8_tensorwise+compile",
    "float8_rowwise",
    "float8_rowwise+compile",
)

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendor data sheets.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))

# Token ids >= this are special/media placeholders in the real Qwen2.5-Omni vocab (151643+);
# the tiny vocab keeps ids < 10 for its specials.
REAL_MAX_TEXT_ID = 151_000
TINY_MIN_TEXT_ID = 10


@dataclass
class Result:
    config: str
    status: str  # "ok" or the failure reason
    tokens_per_s: float = float("nan")
    step_time_s: float = float("nan")
    mfu: float = float("nan")
    peak_memory_gb: float = float("nan")
    loss: float = float("nan")


def peak_bf16_flops(override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s (``None`` on CPU without an override)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    raise ValueError(f"unknown peak bf16 FLOP/s for {name!r}: pass --peak-tflops")


def flops_per_token(model: torch.nn.Module, seq_len: int) -> tuple[float, int]:
    """Model FLOPs per trained token (module docstring) and N, the matmul parameter count."""
    layers = decoder_layers(model)
    num_matmul_params = sum(p.numel() for p in layers.parameters()) + model.lm_head.weight.numel()
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    attention = 12 * text.num_hidden_layers * text.num_attention_heads * head_dim * seq_len
    return 6 * num_matmul_params + attention, num_matmul_params


def build(args: argparse.Namespace, config: str, device: torch.device) -> torch.nn.Module:
    """A fresh random-weight Thinker with the config's float8 / AC / compile transforms."""
    if args.tiny:
        model = tiny_thinker(seed=0, dtype=torch.bfloat16, device=device)
    else:
        model = qwen2_5_omni_thinker_random(args.size, seed=0, dtype=torch.bfloat16, device=device)
    model.train()
    for encoder in multimodal_encoders(model):
        encoder.requires_grad_(False)
    precision = config.split("+")[0]
    if precision.startswith("float8_"):
        emulate = args.tiny and not float8_hardware_supported()
        apply_float8(model, recipe=precision.removeprefix("float8_"), emulate=emulate)
    if args.ac == "full":
        apply_activation_checkpointing(model)
    if config.endswith("+compile"):
        compile_decoder_layers(model, backend=args.compile_backend)
    return model


def random_batch(args: argparse.Namespace, vocab_size: int, device: torch.device, generator: torch.Generator):
    low, high = (TINY_MIN_TEXT_ID, vocab_size) if args.tiny else (0, min(vocab_size, REAL_MAX_TEXT_ID))
    input_ids = torch.randint(low, high, (args.batch_size, args.seq_len), generator=generator)  # [B, S]
    return input_ids.to(device)


def run_config(args: argparse.Namespace, config: str, device: torch.device, peak_flops: float | None) -> Result:
    """Build, warm up and time one configuration; frees everything before returning."""
    model = optimizer = None
    try:
        model = build(args, config, device)
        flops, _ = flops_per_token(model, args.seq_len)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
        generator = torch.Generator().manual_seed(0)
        vocab_size = model.config.text_config.vocab_size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss = None
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                _synchronize(device)
                start = time.perf_counter()
            input_ids = random_batch(args, vocab_size, device, generator)
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
            loss.backward()
            loss = loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        tokens_per_s = args.steps * args.batch_size * args.seq_len / elapsed
        return Result(
            config=config,
            status="ok",
            tokens_per_s=tokens_per_s,
            step_time_s=elapsed / args.steps,
            mfu=tokens_per_s * flops / peak_flops if peak_flops else float("nan"),
            peak_memory_gb=torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan"),
            loss=loss.item(),
        )
    except (torch.OutOfMemoryError, ImportError, ValueError, RuntimeError) as error:
        logger.warning("%s failed: %s", config, error)
        return Result(config=config, status=f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    finally:
        del model, optimizer
        gc.collect()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(results: list[Result]) -> str:
    """Markdown table; speed-ups relative to the same compile setting in bf16."""
    by_config = {r.config: r for r in results}
    lines = [
        "| config | tokens/s | step (s) | MFU (% bf16 peak) | vs bf16 | peak mem (GB) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = by_config.get("bf16+compile" if r.config.endswith("+compile") else "bf16")
        speedup = r.tokens_per_s / base.tokens_per_s if base and base.status == "ok" else float("nan")
        lines.append(
            f"| {r.config} | {r.tokens_per_s:,.0f} | {r.step_time_s:.3f} | {100 * r.mfu:.1f} | "
            f"{speedup:.2f}x | {r.peak_memory_gb:.1f} | {r.status} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7B", choices=("3B", "7B"), help="real Thinker shape")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per config")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    parser.add_argument("--ac", default="full", choices=("full", "none"), help="activation checkpointing")
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default inductor; aot_eager with --tiny)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--tiny", action="store_true", help="tiny Thinker on CPU: smoke test, float8 emulated")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        defaults = dict(seq_len=64, batch_size=2, steps=2, warmup=1)
        for key, value in defaults.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.tiny else "inductor"
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {CONFIGS}")
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA GPU (or run with --tiny on CPU)")
        device = torch.device("cuda")
    peak = peak_bf16_flops(args.peak_tflops)
    shape = tiny_thinker(device="meta") if args.tiny else qwen2_5_omni_thinker_random(args.size, device="meta")
    flops, num_matmul_params = flops_per_token(shape, args.seq_len)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    header = (
        f"Thinker {'tiny' if args.tiny else args.size} (random weights) on {device_name}, torch {torch.__version__}; "
        f"batch {args.batch_size} x seq {args.seq_len}, AC {args.ac}, compile backend {args.compile_backend}, "
        f"{args.steps} timed steps after {args.warmup} warm-up; N = {num_matmul_params:,} matmul params, "
        f"{flops:.4g} FLOP/token; peak bf16 {peak / 1e12 if peak else float('nan'):.1f} TFLOP/s"
    )
    print(header, flush=True)
    results = []
    for config in args.configs.split(","):
        results.append(run_config(args, config, device, peak))
        print(format_table(results).splitlines()[-1], flush=True)
        if args.json is not None:  # after every config: a run stopped by a time limit keeps what finished
            record = {"header": header, "results": [asdict(r) for r in results]}
            args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
