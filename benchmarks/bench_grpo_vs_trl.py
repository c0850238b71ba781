"""GRPO step speed on CPU: merr1's GRPO recipe vs TRL's ``GRPOTrainer``, side by side in one run.

Both trainers live in ONE process and their steps alternate (TRL step k, merr1 step k, TRL step
k + 1, ...: a ``TrainerCallback`` runs one merr1 step at the end of every TRL optimizer step),
so the shared machine's load hits both alike. 1 torch thread. For each side: rollouts per
second = completions of one optimizer step / that step's wall time (median over the measured
steps, after ``--warmup`` steps), the same per second of process CPU time, and the time split.

    pip install -e ".[bench]"                                        # trl + accelerate, once
    python benchmarks/bench_grpo_vs_trl.py                            # the RESULTS.md table
    python benchmarks/bench_grpo_vs_trl.py --profile outputs/grpo_prof

TRL is not a merr1 dependency: install it only for this benchmark (the ``bench`` extra, or
point PYTHONPATH at a folder holding trl/accelerate). Written against trl 1.16.0.

merr1 side: the recipe class ``recipes.grpo_mer_r1_distributed.GRPORecipe``, built in-process from
``recipes/configs/debug/grpo_mer_r1_tiny.yaml`` with overrides for a text model (below); each step
is the recipe's own loop body (next batch of its DataLoader, ``_grpo_step``, metrics.jsonl line).
TRL side: ``trl.GRPOTrainer.train()`` with a subclass that only adds timers around
``_generate_single_turn`` (transformers ``generate``) and ``_generate_and_score_completions``.

Same for both: the tiny text-only ``Qwen2ForCausalLM`` (``merr1.components.models.tiny_qwen2``,
seed 0) with the tiny tokenizer, written once as an HF directory (safetensors) that both load in
float32; the RL prompts of the generated sample data, text-only, no system prompt, instruction
"List the emotions.", in dataset order (no shuffling), so step k of both sides gets the same
prompts. TRL gets them as plain strings (the decoded merr1 prompt ids, chat template already
applied); the script checks that TRL's tokenization reproduces merr1's ids. Rewards: the debug
config's ``RecallReward`` + ``PrecisionReward`` (duplicate penalty) + strict ``FormatReward``,
wrapped as TRL reward functions. The model is randomly initialised: it practically never emits
EOS, so both sides generate ``max_new_tokens`` for every completion (the table shows the mean
completion length of each side as a check).

Settings mapping (P = prompts per optimizer step, M = prompts per micro-batch):

    what                        merr1 (recipe config)                 TRL (GRPOConfig)
    completions per step        batch_size*grad_accum*G = P*G         per_device_train_batch_size*grad. accum. steps
    micro-batch                 batch_size = M prompts x G            per_device_train_batch_size = M*G completions
    micro-batches per update    gradient_accumulation_steps = P/M     gradient_accumulation_steps = P/M
    generations per step        one rollout phase per step            steps_per_generation = grad accum (default):
                                                                      generation_batch_size = P*G, one phase per step
    samples per prompt          num_generations = G                   num_generations = G
    response cap                generation.max_new_tokens             max_completion_length
    stop                        EOS only (stop_strings: [])           EOS only (TRL has no stop strings without vLLM)
    sampling                    temperature 1, top_p 1, top_k 0       temperature 1, top_p 1, top_k 0
    updates per rollout batch   num_iterations = 1                    num_iterations = 1 (old log-probs not recomputed)
    KL                          loss.beta = 0 (no reference model)    beta = 0 (no reference model)
    loss                        GRPOLoss aggregation grpo, clip 0.2   loss_type "grpo", epsilon 0.2
    advantages                  groups recall, precision, format 0.1  reward_weights [1, 1, 0.1],
                                                                      multi_objective_aggregation "normalize_then_sum",
                                                                      scale_rewards "group"
    precision                   dtype fp32                            bf16 False, model loaded in float32
    activation checkpointing    off                                   gradient_checkpointing False (TRL default True)
    optimizer                   AdamW lr 1e-4, wd 0, foreach          AdamW lr 1e-4, wd 0 (transformers' default
                                                                      fused CPU kernel), constant lr
    grad clipping               max_grad_norm 1.0                     max_grad_norm 1.0
    device / logging            cpu, metrics.jsonl every step         use_cpu, report_to none, logging_steps 1,
                                                                      no tqdm, no checkpoints

The remaining semantic differences do not change the work per step: TRL's "normalize_then_sum"
also rescales the summed advantage by its batch std (merr1 does not); TRL shuffles completions
across micro-batches (merr1 keeps each prompt's G samples together). merr1 additionally computes
the logged recall/precision/F1 rewards every step (the recipe always does). Neither side
computes old log-probs (one update per rollout batch: ratio 1).

Time split columns. merr1: the recipe's own ``time/*`` metrics (generate = sampling; score =
decode + rewards + advantages; train = policy update: forward, backward, optimizer); other =
the rest of the loop body (data loading, metrics). TRL: generate = ``_generate_single_turn``
(transformers ``generate``); score = the rest of ``_generate_and_score_completions`` (prompt
tokenization, decode, rewards, advantages, padding); train = everything else in the optimizer
step (forward, backward, optimizer, Trainer loop and logging).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # our `recipes` package, not the one in torchtune's wheel

from merr1.components.checkpointing import DataPosition  # noqa: E402
from merr1.components.models import tiny_qwen2  # noqa: E402
from merr1.components.tokenizer import tiny_tokenizer  # noqa: E402

DEBUG_CONFIG = REPO_ROOT / "recipes" / "configs" / "debug" / "grpo_mer_r1_tiny.yaml"
SPLIT_KEYS = ("generate", "score", "train", "other")
log = logging.getLogger("bench_grpo_vs_trl")


@dataclass
class StepTime:
    wall: float
    cpu: float
    split: dict[str, float]  # SPLIT_KEYS -> wall seconds
    num_completions: int
    completion_tokens: float  # mean per completion


@dataclass
class Side:
    name: str
    steps: list[StepTime] = field(default_factory=list)
    prompt_lengths: list[float] = field(default_factory=list)  # mean prompt length of every step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts-per-step", type=int, default=16, help="P: prompts per optimizer step")
    parser.add_argument("--micro-batch-prompts", type=int, default=8, help="M: prompts per micro-batch (P %% M == 0)")
    parser.add_argument("--num-generations", type=int, default=4, help="G")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per side")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO_ROOT / "data" / "sample", help="sample data (made on first use)"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoint + outputs (default: a temp dir)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="write cProfile stats of both sides' measured steps here"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.prompts_per_step % args.micro_batch_prompts:
        parser.error("--prompts-per-step must be a multiple of --micro-batch-prompts")
    if args.num_generations < 2:
        parser.error("--num-generations must be >= 2 (TRL requires it)")
    return args


# ------------------------------------------------------------------------------------ shared set-up
def save_shared_checkpoint(out_dir: Path) -> Path:
    """The tiny Qwen2 (seed 0) + tiny tokenizer as an HF directory that both trainers load."""
    from merr1.components.hf_checkpoint import save_hf_checkpoint

    model = tiny_qwen2(seed=0, dtype=torch.float32)
    save_hf_checkpoint(model, out_dir, dtype=torch.float32, tokenizer=tiny_tokenizer())
    return out_dir


def merr1_config(args: argparse.Namespace, checkpoint_dir: Path, output_dir: Path):
    """The debug GRPO config with the text-model overrides (module docstring)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(DEBUG_CONFIG)
    overrides = {
        "output_dir": str(output_dir),
        "checkpoint_dir": str(checkpoint_dir),
        "model": {"_component_": "merr1.components.models.tiny_qwen2", "seed": 0},
        "batch_size": args.micro_batch_prompts,
        "gradient_accumulation_steps": args.prompts_per_step // args.micro_batch_prompts,
        "num_generations": args.num_generations,
        "num_iterations": 1,
        "epochs": 1,
        "max_steps_per_epoch": args.warmup + args.steps,
        "shuffle": False,
        "log_samples_every_n_steps": 10**6,
        "calibration": None,
        "advantage": {
            "_component_": "merr1.components.advantages.AdvantageGroups",
            "groups": [
                {"name": "recall", "weight": 1.0, "rewards": {"recall": 1.0}},
                {"name": "precision", "weight": 1.0, "rewards": {"precision": 1.0}},
                {"name": "format", "weight": 0.1, "rewards": {"format": 1.0}},
            ],
        },
    }
    cfg = OmegaConf.merge(cfg, overrides)
    cfg.dataset.data_dir = str(args.data_dir)
    cfg.dataset.modalities = []
    cfg.generation.max_new_tokens = args.max_new_tokens
    cfg.generation.temperature = 1.0
    cfg.generation.stop_strings = []  # TRL (without vLLM) stops at EOS only
    cfg.rewards = [r for r in cfg.rewards if not r._component_.endswith("CalibrationRewards")]
    cfg.loss.beta = 0.0
    cfg.dtype = "fp32"
    cfg.device = "cpu"
    return cfg


# ------------------------------------------------------------------------------------ merr1 side
class Merr1Runner:
    """The GRPO recipe, stepped one optimizer step at a time (the body of ``GRPORecipe.train``)."""

    def __init__(self, cfg) -> None:
        from recipes.grpo_mer_r1_distributed import GRPORecipe

        self.recipe = GRPORecipe(cfg)
        self.recipe.setup(cfg)
        recipe = self.recipe
        self._batches = (batch for _, (batch,) in recipe._loader.steps(DataPosition()))
        self.side = Side("merr1")
        self.dataset = recipe._dataset
        self.tokenizer = recipe._tokenizer
        self._profiler: cProfile.Profile | None = None

    def step(self, measured: bool) -> None:

        recipe = self.recipe
        if measured and self._profiler is not None:
            self._profiler.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        batch = next(self._batches)
        metrics = recipe._grpo_step(batch)
        recipe._position = DataPosition(0, recipe._position.step_in_epoch + 1, recipe._position.global_step + 1)
        recipe._run.metric_logger.log(recipe._position.global_step, metrics)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if measured and self._profiler is not None:
            self._profiler.disable()
        split = {k: metrics[f"time/{k}"] for k in ("generate", "score", "train")}
        split["other"] = wall - sum(split.values())  # data loading, metrics; time/calibrate (no calibration: ~0)
        num_completions = len(batch["names"]) * recipe._group_size
        if measured:
            self.side.steps.append(StepTime(wall, cpu, split, num_completions, metrics["response_length/mean"]))
        self.side.prompt_lengths.append(batch["prompt_mask"].sum(-1).float().mean().item())

    def close(self) -> None:
        self.recipe.cleanup()


# ------------------------------------------------------------------------------------ TRL side
def trl_reward_functions(cfg) -> list:
    """merr1's configured rewards (same classes and kwargs) as TRL reward functions."""
    from torchtune import config as tt_config

    from merr1.rewards import RewardBatch

    functions = []
    for reward_cfg in cfg.rewards:
        reward = tt_config.instantiate(reward_cfg)
        (name,) = reward.outputs

        def reward_func(prompts, completions, emotions, _reward=reward, _name=name, **kwargs):
            batch = RewardBatch(responses=[[c] for c in completions], labels=[list(e) for e in emotions])
            return _reward(batch).rewards[_name].flatten().tolist()

        reward_func.__name__ = name
        functions.append(reward_func)
    return functions


def trl_dataset(dataset, tokenizer, num_prompts: int):
    """The first ``num_prompts`` merr1 RL prompts as TRL rows: decoded prompt string + GT words.

    Returns:
        (datasets.Dataset, number of prompts whose TRL tokenization differs from merr1's ids)
    """
    from datasets import Dataset, Features, Sequence, Value

    rows = {"prompt": [], "emotions": []}
    num_mismatched = 0
    for i in range(num_prompts):
        item = dataset[i]
        ids = item["prompt_ids"].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=False)
        num_mismatched += tokenizer(text=text)["input_ids"] != ids
        rows["prompt"].append(text)
        rows["emotions"].append(list(item["labels"]))
    features = Features({"prompt": Value("string"), "emotions": Sequence(Value("string"))})
    return Dataset.from_dict(rows, features=features), num_mismatched


def trl_config(args: argparse.Namespace, output_dir: Path, cfg):
    from trl import GRPOConfig

    G = args.num_generations
    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.micro_batch_prompts * G,  # counts completions
        gradient_accumulation_steps=args.prompts_per_step // args.micro_batch_prompts,
        num_generations=G,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        num_iterations=1,
        beta=0.0,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        multi_objective_aggregation="normalize_then_sum",
        reward_weights=[1.0, 1.0, 0.1],
        mask_truncated_completions=False,
        learning_rate=float(cfg.optimizer.lr),
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=float(cfg.max_grad_norm),
        max_steps=args.warmup + args.steps,
        shuffle_dataset=False,
        bf16=False,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32},
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
        log_completions=False,
    )


def build_trl(args, checkpoint_dir: Path, output_dir: Path, cfg, dataset, merr1_runner: Merr1Runner):
    """A GRPOTrainer subclass with timers, and a callback that runs one merr1 step after each TRL step."""
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    side = Side("TRL")

    class TimedGRPOTrainer(GRPOTrainer):
        timers = {"generate": 0.0, "rollout": 0.0}
        completion_lengths: list[int] = []
        prompt_lengths: list[int] = []

        def _generate_single_turn(self, prompt_ids, *rest, **kwargs):
            start = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *rest, **kwargs)
            self.timers["generate"] += time.perf_counter() - start
            self.completion_lengths = [len(c) for c in out[0]]
            self.prompt_lengths = [len(p) for p in prompt_ids]
            return out

        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.timers["rollout"] += time.perf_counter() - start
            return out

    class Interleave(TrainerCallback):
        """Times TRL's step (previous callback exit -> this on_step_end) and then runs a merr1 step."""

        def __init__(self) -> None:
            self.resume_wall = self.resume_cpu = None
            self.profiler = None
            self.step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self._resume()

        def _resume(self) -> None:
            trainer.timers.update(generate=0.0, rollout=0.0)
            if self.profiler is not None and self.step >= args_.warmup:
                self.profiler.enable()
            self.resume_wall, self.resume_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.resume_wall, time.process_time() - self.resume_cpu
            measured = self.step >= args_.warmup
            if self.profiler is not None and measured:
                self.profiler.disable()
            if measured:
                generate, rollout = trainer.timers["generate"], trainer.timers["rollout"]
                split = {"generate": generate, "score": rollout - generate, "train": wall - rollout, "other": 0.0}
                lengths = trainer.completion_lengths
                side.steps.append(StepTime(wall, cpu, split, len(lengths), sum(lengths) / len(lengths)))
            side.prompt_lengths.append(sum(trainer.prompt_lengths) / len(trainer.prompt_lengths))
            merr1_runner.step(measured)
            self.step += 1
            self._resume()

    args_ = args
    callback = Interleave()
    trainer = TimedGRPOTrainer(
        model=str(checkpoint_dir),
        reward_funcs=trl_reward_functions(cfg),
        args=trl_config(args, output_dir, cfg),
        train_dataset=dataset,
        processing_class=merr1_runner.tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts
    return trainer, callback, side


# ------------------------------------------------------------------------------------ report
def summarize(side: Side) -> dict[str, float]:
    steps = side.steps
    wall = statistics.median(s.wall for s in steps)
    cpu = statistics.median(s.cpu for s in steps)
    num = statistics.median(s.num_completions for s in steps)
    row = {
        "rollouts_per_s": num / wall,
        "rollouts_per_cpu_s": num / cpu,
        "step_wall": wall,
        "step_cpu": cpu,
        "completion_tokens": statistics.mean(s.completion_tokens for s in steps),
        "prompt_tokens": statistics.mean(side.prompt_lengths),
    }
    for key in SPLIT_KEYS:
        row[key] = statistics.median(s.split[key] for s in steps)
    return row


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| trainer | rollouts/s (wall) | rollouts/s (CPU) | step wall (s) | step CPU (s) | generate (s) | score (s) "
        "| train (s) | other (s) | prompt tok | completion tok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['rollouts_per_s']:.1f} | {r['rollouts_per_cpu_s']:.1f} | {r['step_wall']:.3f} | "
            f"{r['step_cpu']:.3f} | {r['generate']:.3f} | {r['score']:.3f} | {r['train']:.3f} | {r['other']:.3f} | "
            f"{r['prompt_tokens']:.1f} | {r['completion_tokens']:.1f} |"
        )
    return "\n".join(lines)


def top_functions(profiler: cProfile.Profile, limit: int = 25) -> str:
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(limit)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as tmp:
        work = args.work_dir or Path(tmp)
        checkpoint_dir = save_shared_checkpoint(work / "tiny_qwen2")
        cfg = merr1_config(args, checkpoint_dir, work / "merr1")
        merr1 = Merr1Runner(cfg)
        num_prompts = (args.warmup + args.steps) * args.prompts_per_step
        dataset, num_mismatched = trl_dataset(merr1.dataset, merr1.tokenizer, num_prompts)
        trainer, callback, trl_side = build_trl(args, checkpoint_dir, work / "trl", cfg, dataset, merr1)
        if args.profile is not None:
            callback.profiler, merr1._profiler = cProfile.Profile(), cProfile.Profile()
        trainer.train()
        merr1.close()
    rows = {"merr1": summarize(merr1.side), "TRL": summarize(trl_side)}
    speedup = rows["merr1"]["rollouts_per_s"] / rows["TRL"]["rollouts_per_s"]
    speedup_cpu = rows["merr1"]["rollouts_per_cpu_s"] / rows["TRL"]["rollouts_per_cpu_s"]
    print(
        f"tiny Qwen2 (text), CPU, {args.threads} thread(s), torch {torch.__version__}; "
        f"P={args.prompts_per_step} prompts x G={args.num_generations} per step, micro-batch "
        f"{args.micro_batch_prompts} prompts, max {args.max_new_tokens} new tokens; "
        f"median of {args.steps} steps after {args.warmup} warm-up, sides interleaved; "
        f"{num_mismatched}/{num_prompts} TRL prompt tokenizations differ from merr1's ids"
    )
    print(format_table(rows))
    print(f"merr1 / TRL: {speedup:.2f}x rollouts/s (wall), {speedup_cpu:.2f}x (CPU)")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for name, profiler in (("merr1", merr1._profiler), ("trl", callback.profiler)):
            profiler.dump_stats(args.profile / f"{name}.prof")
            print(f"\n== cProfile {name} (measured steps, by own time) ==\n{top_functions(profiler)}")
    return rows


if __name__ == "__main__":
    main()
