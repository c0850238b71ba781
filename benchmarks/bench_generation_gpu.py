"""Decode speed of merr1's sampler on a 7B-shaped Qwen2.5-Omni Thinker vs the HBM roofline.

The Thinker's LLM has the real Qwen2.5-Omni-7B text shape (hidden 3584, 28 layers, 28 heads,
4 KV heads, intermediate 18944, vocab 152064, bf16) with random weights (no download possible);
its audio and vision towers are tiny, since decoding never runs them. Prompts are text only
(positions still go through the Thinker's 3-D mRoPE path). Rows = prompts x G samples.

Decode tokens/s = rows * (N - 1) / (time(N new tokens) - time(1 new token)), i.e. prefill and
the first token excluded; median of ``--repeats``. No EOS/stop, so every row decodes N tokens.

Roofline: a decode step must read every LLM weight once (lm_head included, the embedding table
not) plus each row's KV cache, so steps/s <= HBM bandwidth / (weight bytes + KV bytes), with the
KV length averaged over the decode. The achieved fraction is measured / roofline.
Bandwidth: H100 SXM 3.35 TB/s, H100 PCIe 2.0 TB/s, H200 4.8 TB/s (``--bandwidth`` overrides).
Target (issue 17): CUDA graphs >= 50% of the roofline at 64 rows.

Backends: merr1's ``decode_backend`` values (``eager``: one transformers forward per token;
``static``: the static-cache step run eagerly; ``cuda_graph``: that step replayed as CUDA graphs)
and ``transformers`` (``model.generate``). merr1 samples with one generator per row (as the GRPO
recipe does); every backend samples at temperature 1 from the full distribution.

    python benchmarks/bench_generation_gpu.py                  # GPU, batches 8/32/64
    python benchmarks/bench_generation_gpu.py --backends cuda_graph --batches 64
    python benchmarks/bench_generation_gpu.py --tiny           # CPU smoke test (eager, static)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merr1.components.generation import SamplingConfig, generate, release_decode_graphs  # noqa: E402
from merr1.components.models import THINKER_TEXT_SHAPES, tiny_thinker_config  # noqa: E402

# The LLM shapes: the real 7B Thinker text model (tied embeddings are irrelevant to decode speed)
# and the tiny test model's (tiny_thinker_config defaults) for the CPU smoke test.
TEXT_7B = {k: v for k, v in THINKER_TEXT_SHAPES["7B"].items() if k != "tie_word_embeddings"}
TEXT_TINY: dict = {}
BANDWIDTH_TBPS = {"H200": 4.8, "H100 PCIe": 2.0, "H100": 3.35}
# merr1's decode backends, then transformers' own generate.
BACKENDS = ("eager", "static", "cuda_graph", "transformers")


def build_thinker(text_shape: dict, device: torch.device, dtype: torch.dtype):
    """A randomly initialised Thinker with the given LLM shape and tiny towers, on ``device``."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = tiny_thinker_config(**text_shape)
    config.text_config.max_position_embeddings = 32768
    with torch.device(device):
        torch.manual_seed(0)
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()


def llm_weight_bytes(model) -> int:
    """Bytes of the weights a decode step reads: the LLM and lm_head, not the embedding table."""
    llm = model.model.language_model
    skip = {id(llm.embed_tokens.weight)}
    params = [p for p in llm.parameters() if id(p) not in skip] + [model.lm_head.weight]
    return sum(p.numel() * p.element_size() for p in params)


def kv_bytes_per_token(model) -> int:
    cfg = model.config.text_config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * element  # K and V


def bandwidth_bytes_per_s(device: torch.device, override_tbps: float | None) -> float | None:
    if override_tbps is not None:
        return override_tbps * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tbps in BANDWIDTH_TBPS.items():
        if key in name:
            return tbps * 1e12
    raise ValueError(f"unknown HBM bandwidth for {name!r}: pass --bandwidth in TB/s")


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def decode_tokens_per_s(model, rows: int, samples: int, prompt_len: int, new_tokens: int, repeats: int, backend: str):
    """Median decode tokens/s over ``repeats`` (prefill and first token excluded).

    ``backend``: a merr1 ``decode_backend`` (per-row generators, as the GRPO recipe samples) or
    ``"transformers"`` (``model.generate``, which prefills each of the G copies).
    """
    device = model.lm_head.weight.device
    num_prompts = rows // samples
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(10, vocab, (num_prompts, prompt_len), device=device, generator=gen)
    mask = torch.ones_like(ids)

    def run(n: int) -> None:
        if backend == "transformers":
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, num_return_sequences=samples, eos_token_id=None, pad_token_id=0,
            )
        else:
            config = SamplingConfig(max_new_tokens=n, temperature=1.0, decode_backend=backend)
            generators = [torch.Generator(device=device).manual_seed(r) for r in range(rows)]
            out = generate(model, ids, mask, config, num_samples=samples, generator=generators)
            assert out.response_ids.shape == (rows, n)

    run(new_tokens)  # warm-up: every CUDA graph of this shape is captured here
    rates = []
    for _ in range(repeats):
        first = timed(lambda: run(1), device)
        full = timed(lambda: run(new_tokens), device)
        rates.append(rows * (new_tokens - 1) / (full - first))
    return statistics.median(rates)


def roofline_tokens_per_s(rows: int, weights: int, per_token_kv: int, prompt_len: int, new_tokens: int,
                          bandwidth: float | None) -> float | None:  # fmt: skip
    """HBM roofline of decode tokens/s: every step reads the weights and each row's KV cache
    (mean context prompt + new/2)."""
    if bandwidth is None:
        return None
    step_bytes = weights + rows * (prompt_len + new_tokens / 2) * per_token_kv
    return rows * bandwidth / step_bytes


def format_table(results: list[dict]) -> str:
    """Markdown table; speed-up relative to merr1's eager backend at the same rows."""
    eager = {r["rows"]: r["tokens_per_s"] for r in results if r["backend"] == "eager" and r["status"] == "ok"}
    lines = [
        "| rows (B x G) | backend | decode tok/s | % of HBM roofline | vs eager | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        rate, roofline = r["tokens_per_s"], r["roofline_tokens_per_s"]
        fraction = f"{100 * rate / roofline:.0f}%" if roofline and r["status"] == "ok" else "n/a"
        speedup = f"{rate / eager[r['rows']]:.2f}x" if r["rows"] in eager and r["status"] == "ok" else "n/a"
        lines.append(
            f"| {r['rows']} ({r['rows'] // r['samples']} x {r['samples']}) | {r['backend']} | {rate:,.0f} | "
            f"{fraction} | {speedup} | {r['status']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny LLM shape on CPU (smoke test)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64], help="rows = prompts x samples")
    parser.add_argument("--samples", type=int, default=8, help="G samples per prompt (capped at the batch)")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backends", default=None,
        help=f"comma-separated subset of {BACKENDS} (default: eager,cuda_graph,transformers; --tiny: eager,static)",
    )  # fmt: skip
    parser.add_argument("--bandwidth", type=float, default=None, help="HBM bandwidth in TB/s (default: by GPU name)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (after every row)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batches, args.prompt_len, args.new_tokens, args.repeats = [2, 4], 16, 8, 1
    if args.backends is None:
        args.backends = "eager,static" if args.tiny else "eager,cuda_graph,transformers"
    args.backends = args.backends.split(",")
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    for rows in args.batches:
        if rows % min(args.samples, rows):
            parser.error(f"batch {rows} is not a multiple of {min(args.samples, rows)} samples per prompt")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.tiny:
        device, dtype, shape = torch.device("cpu"), torch.float32, TEXT_TINY
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, TEXT_7B
    bandwidth = bandwidth_bytes_per_s(device, args.bandwidth)
    model = build_thinker(shape, device, dtype)
    weights = llm_weight_bytes(model)
    per_token_kv = kv_bytes_per_token(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"decode, Thinker {'tiny' if args.tiny else '7B'} LLM (random weights) on {name}; torch {torch.__version__}; "
        f"weights read per step {weights / 1e9:.2f} GB; KV {per_token_kv / 1e3:.1f} kB/token; prompt "
        f"{args.prompt_len}, new tokens {args.new_tokens}; HBM {bandwidth / 1e12 if bandwidth else float('nan'):.2f} TB/s; "
        f"median of {args.repeats}"
    )
    print(header, flush=True)
    results = []
    for rows in args.batches:
        samples = min(args.samples, rows)
        for backend in args.backends:
            record = dict(rows=rows, samples=samples, backend=backend, status="ok", tokens_per_s=float("nan"),
                          roofline_tokens_per_s=roofline_tokens_per_s(rows, weights, per_token_kv, args.prompt_len,
                                                                      args.new_tokens, bandwidth))  # fmt: skip
            try:
                record["tokens_per_s"] = decode_tokens_per_s(
                    model, rows, samples, args.prompt_len, args.new_tokens, args.repeats, backend
                )
            except (torch.OutOfMemoryError, RuntimeError, ValueError) as error:
                record["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            finally:
                release_decode_graphs(model)
            results.append(record)
            print(format_table(results).splitlines()[-1], flush=True)
            if args.json is not None:
                args.json.write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n")
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
