"""HF-format weights: read safetensors into (sharded) models, write what ``from_pretrained`` reloads.

Key layouts. transformers 5 nests the Thinker's modules as ``model.{audio_tower, visual,
language_model}`` while the released checkpoints (and transformers' own ``save_pretrained``) use
the flat layout ``audio_tower.*``, ``visual.*``, ``model.*`` (the LLM) and ``lm_head.*``; a full
Qwen2.5-Omni checkpoint prefixes those with ``thinker.`` next to ``talker.*`` and ``token2wav.*``
(METHOD section 1). ``hf_to_model_key`` / ``model_to_hf_key`` translate; Qwen2 keys are identical.

Distributed loading (no rank ever holds two full copies): every rank builds the model with
``device="meta"`` (see ``merr1.components.models``), applies float8/AC/compile and shards it, then

1. checkpoint-based models: ``load_hf_checkpoint(sharded, checkpoint_dir, device)``: rank 0 reads
   the safetensors into one full CPU state dict (``read_hf_state_dict``), then step 2;
   tiny/random models: rank 0 builds the same builder with ``device="cpu"`` (its one full copy)
   and passes ``model.state_dict()`` to step 2, the other ranks pass ``None``;
2. ``load_full_state_dict(sharded, full_state_dict_or_None, device)`` materialises the meta
   parameters on ``device``, restores the non-persistent buffers, and broadcasts rank 0's
   tensors with ``set_model_state_dict(..., full_state_dict=True, broadcast_from_rank0=True)``,
   each rank keeping only its shard. That call turns the dict it is given into DTensors, so it is
   given a shallow copy and the caller's dict stays untouched (docs/design_notes.md, "Distributed, precision, speed").

Saving (``save_hf_checkpoint``) gathers the full state dict to rank 0's CPU, casts it, splits it
into safetensors files of at most ``max_shard_size_gb`` with a ``model.safetensors.index.json``,
writes ``config.json`` and ``generation_config.json`` (the source checkpoint's when
``copy_files_from`` has one, e.g. the real eos ids [151645, 151643], else the model's), plus tokenizer
and processor files, all into a temporary directory that is
renamed into place at the end, so a crash never leaves a half-written checkpoint. With
``omni_checkpoint_dir`` it writes a FULL Qwen2.5-Omni checkpoint instead: every non-Thinker tensor
and file copied from the original, the ``thinker.*`` tensors replaced by the trained Thinker.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from merr1.components.models import (
    is_full_omni_checkpoint,
    is_thinker,
    read_config_json,
    resolve_dtype,
    retie_word_embeddings,
    ties_word_embeddings,
)

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
THINKER_PREFIX = "thinker."

# (transformers-5 module prefix, checkpoint prefix) of the Thinker; first match wins.
_THINKER_KEY_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.visual.", "visual."),
)

# Files next to the weights that a reloadable directory needs (tokenizer, chat template,
# audio/image/video processor configs). Weights and config.json are written, never copied.
_AUX_FILE_PATTERNS = (
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "*preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)


# --------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------


def hf_to_model_key(key: str, thinker: bool) -> str:
    """Checkpoint key (flat layout, no ``thinker.`` prefix) -> the model's state-dict key."""
    if not thinker or key.startswith(tuple(new for new, _ in _THINKER_KEY_PREFIXES)):
        return key
    for new, old in _THINKER_KEY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def model_to_hf_key(key: str, thinker: bool) -> str:
    """The model's state-dict key -> checkpoint key (flat layout, no ``thinker.`` prefix)."""
    if thinker:
        for new, old in _THINKER_KEY_PREFIXES:
            if key.startswith(new):
                return old + key[len(new) :]
    return key


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def checkpoint_weight_files(checkpoint_dir: str | Path) -> dict[str, Path]:
    """Map every tensor name of a safetensors checkpoint to the file holding it.

    Reads ``model.safetensors.index.json`` (sharded checkpoints) or ``model.safetensors``. Every
    file an index names must lie inside ``checkpoint_dir``: a relative path without ``..`` (checked
    on the name, so the symlinks of a Hugging Face cache snapshot still work); anything else
    (``../../outside/x.safetensors``, ``/etc/x``) is refused.
    """
    from safetensors import safe_open

    checkpoint_dir = Path(checkpoint_dir)
    index = checkpoint_dir / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError(f"weight_map is a {type(weight_map).__name__}, not an object")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a safetensors index ({type(err).__name__}: {err})") from err
        return {key: checkpoint_dir / _confined_file_name(index, key, name) for key, name in weight_map.items()}
    single = checkpoint_dir / SAFE_WEIGHTS_NAME
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {key: single for key in f.keys()}
    raise FileNotFoundError(f"no {SAFE_WEIGHTS_INDEX_NAME} or {SAFE_WEIGHTS_NAME} in {checkpoint_dir}")


def _confined_file_name(index: Path, key: str, name: object) -> str:
    """``name`` if it is a plain relative path inside the checkpoint folder, else ValueError."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(name, str) or not name:
        raise ValueError(f"{index}: the weight_map entry of {key!r} is {name!r}, not a file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise ValueError(
            f"{index}: the weight_map entry of {key!r} is {name!r}, which points outside the checkpoint folder; "
            "index entries must be file names inside it (a tampered or mis-generated index)"
        )
    return name


def _read_tensors(files: dict[str, Path], keys: list[str]) -> dict[str, torch.Tensor]:
    """Read ``keys`` (checkpoint names) from their safetensors files, one file open at a time."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(files[key], []).append(key)
    tensors = {}
    for path, file_keys in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for key in file_keys:
                tensors[key] = f.get_tensor(key)
    return tensors


def read_hf_state_dict(checkpoint_dir: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read a checkpoint's weights under ``model``'s state-dict keys and dtypes (on CPU).

    Args:
        checkpoint_dir: full Qwen2.5-Omni (only ``thinker.*`` is read), Thinker-only, or Qwen2
            checkpoint directory.
        model: the target model (a meta skeleton is enough: only its keys and dtypes are used).

    Returns:
        ``{model key: tensor}``; for a model with tied embeddings whose checkpoint omits
        ``lm_head.weight`` (HF convention), that key aliases the embedding tensor.

    Raises:
        ValueError: naming the file and key of the problem: a ``config.json`` of another
            architecture, missing or unexpected tensors (wrong model for this checkpoint), an
            integer (quantized) tensor where the model has a float one, a NaN or infinite value
            (``check_weight``), an index entry outside the folder.
    """
    thinker = is_thinker(model)
    check_checkpoint_config(checkpoint_dir, model)
    full_omni = thinker and is_full_omni_checkpoint(checkpoint_dir)
    files = checkpoint_weight_files(checkpoint_dir)
    names = {}  # model key -> checkpoint key
    for ckpt_key in files:
        if full_omni:
            if not ckpt_key.startswith(THINKER_PREFIX):
                continue  # Talker / token2wav
            key = hf_to_model_key(ckpt_key[len(THINKER_PREFIX) :], thinker)
        else:
            key = hf_to_model_key(ckpt_key, thinker)
        names[key] = ckpt_key

    # Old checkpoints may store non-persistent buffers (rotary inv_freq): recomputed, never read.
    buffer_names = {name for name, _ in model.named_buffers()}
    names = {key: ckpt_key for key, ckpt_key in names.items() if key not in buffer_names}
    expected = model.state_dict()
    tied_head = ties_word_embeddings(model) and "lm_head.weight" in expected and "lm_head.weight" not in names
    missing = sorted(set(expected) - set(names) - ({"lm_head.weight"} if tied_head else set()))
    unexpected = sorted(set(names) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {checkpoint_dir} does not match {type(model).__name__}: "
            f"{len(missing)} missing tensors {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )
    tensors = _read_tensors(files, list(names.values()))
    for key, ckpt_key in names.items():
        check_weight(tensors[ckpt_key], expected[key].dtype, ckpt_key, files[ckpt_key])
    state_dict = {key: tensors.pop(ckpt_key).to(expected[key].dtype) for key, ckpt_key in names.items()}
    if tied_head:
        state_dict["lm_head.weight"] = state_dict[hf_to_model_key("model.embed_tokens.weight", thinker)]
    return state_dict


# Accepted ``architectures`` of a config.json per model_type (the real Qwen2.5-Omni-7B says
# Qwen2_5OmniModel; transformers' save_pretrained of the full model writes
# Qwen2_5OmniForConditionalGeneration).
_ARCHITECTURES = {
    "qwen2_5_omni": {"Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration"},
    "qwen2_5_omni_thinker": {"Qwen2_5OmniThinkerForConditionalGeneration"},
    "qwen2": {"Qwen2ForCausalLM"},
}


def check_checkpoint_config(checkpoint_dir: str | Path, model: nn.Module) -> None:
    """Refuse a checkpoint whose ``config.json`` describes another architecture than ``model``.

    A Thinker model accepts a full Qwen2.5-Omni (``qwen2_5_omni``) or a Thinker-only
    (``qwen2_5_omni_thinker``) checkpoint, a Qwen2 model a ``qwen2`` one; ``architectures``, when
    present, must name a class of that model_type (``_ARCHITECTURES``), so e.g. a
    ``Qwen2ForSequenceClassification`` head is refused even though its model_type is ``qwen2``.

    Raises:
        ValueError: naming ``config.json``, what it says and what the model needs.
    """
    path = Path(checkpoint_dir) / "config.json"
    config = read_config_json(checkpoint_dir)
    model_type = config.get("model_type")
    accepted = {"qwen2_5_omni", "qwen2_5_omni_thinker"} if is_thinker(model) else {model.config.model_type}
    if model_type not in accepted:
        raise ValueError(
            f"{path}: model_type {model_type!r}, but the configured model is a {type(model).__name__} "
            f"(accepts model_type {sorted(accepted)}): point checkpoint_dir at a checkpoint of that architecture "
            "or change `model` in the config"
        )
    architectures = config.get("architectures") or []
    known = _ARCHITECTURES.get(model_type, set()) | {type(model).__name__}
    if architectures and not set(architectures) & known:
        raise ValueError(
            f"{path}: architectures {architectures} is not a model merr1 can load as {type(model).__name__} "
            f"(expected one of {sorted(known)})"
        )


def check_weight(tensor: torch.Tensor, model_dtype: torch.dtype, key: str, path: Path) -> None:
    """Refuse a checkpoint tensor that would load as garbage, naming its key and file.

    - an integer tensor (int8/uint8/int4-packed quantized weights) for a float parameter: the cast
      would keep the raw integers as weights;
    - a NaN or infinite value. The check is ``isfinite(tensor.sum())`` (a NaN/inf anywhere makes
      the sum non-finite), confirmed element-wise only when the sum is not finite (a huge finite
      sum could overflow): measured ~4 GB/s for bf16 and ~2 GB/s for fp32 per CPU core, about 4 s
      for the 15 GB of a 7B bf16 checkpoint, next to reading those bytes from disk.

    Raises:
        ValueError: naming the key, the file and the problem.
    """
    if model_dtype.is_floating_point and not tensor.is_floating_point():
        raise ValueError(
            f"{path}: tensor {key!r} has dtype {tensor.dtype}, the model's parameter is {model_dtype}: quantized "
            "(integer) checkpoints are not supported; use the original floating-point weights"
        )
    if tensor.is_floating_point() and tensor.numel() and not torch.isfinite(tensor.sum()):
        num_bad = int((~torch.isfinite(tensor)).sum())
        if num_bad:
            raise ValueError(
                f"{path}: tensor {key!r} holds {num_bad} NaN or infinite value(s) of {tensor.numel()}: the checkpoint "
                "is corrupt or comes from a diverged run"
            )


# --------------------------------------------------------------------------------------------
# Loading into a (sharded, meta) model
# --------------------------------------------------------------------------------------------


def _has_meta_parameters(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


def materialize_meta_model(model: nn.Module, device: str | torch.device) -> None:
    """Allocate meta parameters on ``device`` (uninitialised) keeping buffer values.

    ``to_empty`` re-allocates buffers too; the builders' meta skeletons hold real buffer values
    (rotary frequencies), which are saved before and copied back after. An unsharded model's tied
    embeddings are re-tied (``to_empty`` gives each module its own new parameter; FSDP2 keeps the
    sharing itself).
    """
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    meta_buffers = [name for name, buf in buffers.items() if buf.device.type == "meta"]
    if meta_buffers:
        raise ValueError(
            f"buffers {meta_buffers[:3]} are on the meta device, their values are lost; build the model with "
            f"merr1.components.models builders (device='meta' keeps buffers real)"
        )
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    if not _is_sharded(model):
        retie_word_embeddings(model)


def load_full_state_dict(
    model: nn.Module,
    full_state_dict: dict[str, torch.Tensor] | None,
    device: str | torch.device | None = None,
) -> None:
    """Load a full (unsharded) state dict into ``model``, which may be FSDP2-sharded and on meta.

    In a distributed run every rank calls this; only rank 0's ``full_state_dict`` is read (others
    pass ``None``) and broadcast tensor by tensor, each rank keeping its shard. In a single process
    it is a plain ``load_state_dict``. The caller's dict is not modified.

    Args:
        model: target model (its meta parameters are first materialised on ``device``).
        full_state_dict: ``{key: full tensor}`` on rank 0 (or the single process); ``None`` elsewhere.
        device: where to materialise meta parameters (the FSDP mesh's device; ``"cpu"`` with
            CPU offload). Required if the model has meta parameters.
    """
    if _has_meta_parameters(model):
        if device is None:
            raise ValueError("the model has meta parameters: pass the device to materialise them on")
        materialize_meta_model(model, device)
    # Several ranks (sharded, or replicated as in eval_mer: rank 0 broadcasts) or an FSDP-sharded
    # model on one rank (DTensor parameters) -> set_model_state_dict; else a plain load.
    distributed = dist.is_available() and dist.is_initialized() and (dist.get_world_size() > 1 or _is_sharded(model))
    if not distributed:
        if full_state_dict is None:
            raise ValueError("full_state_dict is required in a single process")
        model.load_state_dict(full_state_dict, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if dist.get_rank() == 0 and full_state_dict is None:
        raise ValueError("rank 0 must pass the full state dict")
    to_load = dict(full_state_dict) if dist.get_rank() == 0 else {}
    # Broadcasts go through the process group's device; CPU-resident (offloaded) shards go back to CPU.
    cpu_offload = all(p.device.type == "cpu" for p in model.parameters())
    set_model_state_dict(
        model,
        to_load,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=cpu_offload),
    )


def load_hf_checkpoint(model: nn.Module, checkpoint_dir: str | Path, device: str | torch.device | None = None) -> None:
    """Rank 0 reads ``checkpoint_dir`` (``read_hf_state_dict``), then ``load_full_state_dict``.

    The one-call variant of the loading recipe for checkpoint-based models built on meta.
    """
    is_rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    full_state_dict = read_hf_state_dict(checkpoint_dir, model) if is_rank0 else None
    load_full_state_dict(model, full_state_dict, device)


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Unwrap tensor subclasses (e.g. torchao's float8 all-gather weight wrapper) to a plain tensor."""
    while type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):
        inner_names, _ = tensor.__tensor_flatten__()
        assert len(inner_names) == 1, f"cannot unwrap {type(tensor).__name__}"
        tensor = getattr(tensor, inner_names[0])
    return tensor


def gather_full_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on rank 0's CPU (``None`` on other ranks); collective.

    Args:
        model: plain or FSDP2-sharded model (activation-checkpoint wrappers and compiled layers
            keep their original keys).
        dtype: cast floating tensors to this dtype (``None`` keeps them).
    """
    distributed = dist.is_available() and dist.is_initialized() and (dist.get_world_size() > 1 or _is_sharded(model))
    if distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() != 0:
            return None
    else:
        state_dict = model.state_dict()
    out = {}
    for key, tensor in state_dict.items():
        tensor = _plain_tensor(tensor.detach()).cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[key] = tensor
    return out


def _shard_state_dict(state_dict: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split into consecutive groups of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def write_safetensors(state_dict: dict[str, torch.Tensor], out_dir: Path, max_shard_size_gb: float) -> list[str]:
    """Write ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + index into ``out_dir``.

    Returns:
        The written file names.
    """
    from safetensors.torch import save_file

    shards = _shard_state_dict(state_dict, int(max_shard_size_gb * 1024**3))
    if len(shards) == 1:
        save_file(_contiguous(shards[0]), str(out_dir / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        return [SAFE_WEIGHTS_NAME]
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(_contiguous(shard), str(out_dir / name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update(dict.fromkeys(shard, name))
    total_size = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names + [SAFE_WEIGHTS_INDEX_NAME]


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.contiguous() for key, tensor in state_dict.items()}


def copy_aux_files(src_dir: str | Path, out_dir: Path, patterns: tuple[str, ...] = _AUX_FILE_PATTERNS) -> list[str]:
    """Copy tokenizer/processor files matching ``patterns`` from ``src_dir``; returns their names."""
    copied = []
    for pattern in patterns:
        for path in sorted(Path(src_dir).glob(pattern)):
            if path.is_file() and not (out_dir / path.name).exists():
                shutil.copy2(path, out_dir / path.name)
                copied.append(path.name)
    return copied


def _model_config_to_save(model: nn.Module, dtype: torch.dtype):
    """A copy of ``model.config`` with ``architectures`` (the transformers class, not FSDP's
    dynamic subclass) and ``dtype`` set for ``from_pretrained``."""
    import copy

    config = copy.deepcopy(model.config)
    hf_class = next(c for c in type(model).__mro__ if c.__module__.startswith("transformers.models."))
    config.architectures = [hf_class.__name__]
    config.dtype = dtype
    return config


def _omni_state_dict(
    thinker_state_dict: dict[str, torch.Tensor], omni_checkpoint_dir: str | Path
) -> dict[str, torch.Tensor]:
    """The original full checkpoint's tensors with every ``thinker.*`` one replaced (same key set)."""
    files = checkpoint_weight_files(omni_checkpoint_dir)
    original_thinker = {key for key in files if key.startswith(THINKER_PREFIX)}
    new_thinker = {THINKER_PREFIX + key: tensor for key, tensor in thinker_state_dict.items()}
    if set(new_thinker) != original_thinker:
        missing = sorted(original_thinker - set(new_thinker))[:5]
        extra = sorted(set(new_thinker) - original_thinker)[:5]
        raise ValueError(
            f"the trained Thinker does not match the Thinker of {omni_checkpoint_dir}: "
            f"missing {missing}, extra {extra}"
        )
    others = _read_tensors(files, [key for key in files if not key.startswith(THINKER_PREFIX)])
    return {**new_thinker, **others}


def save_hf_checkpoint(
    model: nn.Module,
    output_dir: str | Path,
    *,
    dtype: torch.dtype | str = torch.bfloat16,
    tokenizer=None,
    copy_files_from: str | Path | None = None,
    omni_checkpoint_dir: str | Path | None = None,
    max_shard_size_gb: float = 5.0,
) -> Path | None:
    """Write the model as an HF checkpoint directory that ``from_pretrained`` reloads; collective.

    Every rank calls this (the state dict is gathered with all-gathers); rank 0 writes into a
    temporary sibling directory and renames it to ``output_dir`` (an existing ``output_dir`` is
    replaced only once the new one is complete).

    Args:
        model: plain or FSDP2-sharded Thinker / Qwen2 model (float8, AC and compile are fine).
        output_dir: target directory.
        dtype: dtype of the written floating tensors (the Thinker's; copied Talker/token2wav
            tensors keep theirs).
        tokenizer: saved with ``save_pretrained`` if given.
        copy_files_from: directory whose tokenizer/processor/chat-template files are copied
            (typically the checkpoint the run started from).
        omni_checkpoint_dir: write a FULL Qwen2.5-Omni checkpoint: the original's config, files
            and non-Thinker tensors, with the trained Thinker under ``thinker.``. Needs a Thinker.
        max_shard_size_gb: safetensors files larger than this are split (index json written).

    Returns:
        ``Path(output_dir)`` on rank 0, ``None`` on the other ranks.
    """
    dtype = resolve_dtype(dtype)
    thinker = is_thinker(model)
    if omni_checkpoint_dir is not None and not thinker:
        raise ValueError("omni_checkpoint_dir needs a Qwen2.5-Omni Thinker model")
    if omni_checkpoint_dir is not None and not is_full_omni_checkpoint(omni_checkpoint_dir):
        raise ValueError(f"{omni_checkpoint_dir} is not a full Qwen2.5-Omni checkpoint (model_type 'qwen2_5_omni')")
    full_state_dict = gather_full_state_dict(model, dtype)
    output_dir = Path(output_dir)
    try:
        if full_state_dict is not None:
            _write_checkpoint(
                model,
                full_state_dict,
                output_dir,
                dtype,
                tokenizer,
                copy_files_from,
                omni_checkpoint_dir,
                max_shard_size_gb,
            )
    finally:  # also when rank 0 fails: the other ranks must not wait here forever
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    return output_dir if full_state_dict is not None else None


def _write_checkpoint(
    model, full_state_dict, output_dir, dtype, tokenizer, copy_files_from, omni_checkpoint_dir, max_shard_size_gb
) -> None:
    thinker = is_thinker(model)
    if ties_word_embeddings(model):
        full_state_dict.pop("lm_head.weight", None)  # HF omits the tied head
    hf_state_dict = {model_to_hf_key(key, thinker): tensor for key, tensor in full_state_dict.items()}
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    needed = sum(t.numel() * t.element_size() for t in hf_state_dict.values())
    _check_free_space(output_dir.parent, needed, output_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        if omni_checkpoint_dir is not None:
            write_safetensors(_omni_state_dict(hf_state_dict, omni_checkpoint_dir), tmp_dir, max_shard_size_gb)
            for path in sorted(Path(omni_checkpoint_dir).iterdir()):
                is_weights = path.name.endswith(".safetensors") or path.name == SAFE_WEIGHTS_INDEX_NAME
                if path.is_file() and not is_weights:
                    shutil.copy2(path, tmp_dir / path.name)
        else:
            write_safetensors(hf_state_dict, tmp_dir, max_shard_size_gb)
            _model_config_to_save(model, dtype).save_pretrained(str(tmp_dir))
            if copy_files_from is not None:
                copy_aux_files(copy_files_from, tmp_dir)  # the source's generation_config.json first
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None and not (tmp_dir / "generation_config.json").exists():
                generation_config.save_pretrained(str(tmp_dir))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp_dir))
        _replace_dir(tmp_dir, output_dir)
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if _is_disk_full_error(err):  # safetensors reports it as "I/O error: No space left on device"
            raise OSError(
                errno.ENOSPC,
                f"disk full while writing the HF weights into {output_dir} (about {needed} bytes); the partial "
                f"write was removed. Free space in {output_dir.parent} or write elsewhere",
            ) from err
        raise
    logger.info("wrote HF checkpoint %s", output_dir)


def _check_free_space(folder: Path, needed: int, target: Path) -> None:
    """``OSError(ENOSPC)`` naming the folder, the bytes needed and the bytes free when the weights
    (plus 1% and 1 MiB for the config and tokenizer files) cannot fit."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    needed = int(needed * 1.01) + 2**20
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"not enough free space to write the HF weights {target}: they need about {needed} bytes "
            f"({needed / 1e9:.2f} GB), {folder} has {free} bytes ({free / 1e9:.2f} GB) free",
        )


def _is_disk_full_error(err: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain, or safetensors' message for it (it drops the errno)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _replace_dir(new_dir: Path, target: Path) -> None:
    """Rename ``new_dir`` to ``target``; an existing ``target`` is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new_dir, target)
    if old is not None:
        shutil.rmtree(old)
