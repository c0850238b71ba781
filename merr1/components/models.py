"""Model builders: Qwen2.5-Omni Thinker and Qwen2 causal LMs, real (from a checkpoint) and tiny.

Every builder is a YAML ``_component_`` and takes ``dtype`` and ``device``:

- ``device="cpu"`` (or ``"cuda"``): a complete model with its weights (read from the checkpoint
  directory, or randomly initialised from ``seed`` for the tiny and benchmark-shaped models).
- ``device="meta"``: a skeleton whose *parameters* live on the meta device (no memory, no weights
  read) while its non-persistent buffers (rotary ``inv_freq``, the audio tower's sinusoids) are
  real CPU tensors. This is what the distributed recipes build on every rank before sharding;
  ``merr1.components.hf_checkpoint.load_full_state_dict`` then materialises it and broadcasts
  the weights from rank 0 (which built the same builder with ``device="cpu"``).

Tiny models are randomly initialised from a seed, built in code, and use the tiny tokenizer's
special-token ids (``merr1.components.tokenizer.TINY_SPECIAL_TOKENS``). Parameters are created in
float32 and then cast to ``dtype`` (buffers stay float32, as ``from_pretrained`` keeps them), so
``tiny_thinker(dtype=torch.bfloat16)`` holds the bf16 rounding of ``tiny_thinker()``'s weights.

The Qwen2.5-Omni checkpoints store the Thinker (audio tower + vision encoder + LLM) under the
``thinker.`` prefix next to the Talker and token2wav (METHOD section 1); ``qwen2_5_omni_thinker``
reads either such a full checkpoint or a Thinker-only directory written by
``hf_checkpoint.save_hf_checkpoint``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from merr1.components.config_checks import forwards_kwargs_to
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS

logger = logging.getLogger(__name__)

TINY_VOCAB_SIZE = 512

# Text (LLM) shapes of the public Qwen2.5-Omni checkpoints (config.json, thinker_config.text_config).
# The 3B's tie_word_embeddings is an unconfirmed assumption (Qwen2.5-3B ties them) used ONLY for
# random-weight benchmark models: a model built from a checkpoint is tied exactly when the
# checkpoint has no lm_head.weight (``tie_word_embeddings_from_checkpoint``), whatever its config says.
THINKER_TEXT_SHAPES: dict[str, dict] = {
    "3B": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "7B": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}

# Special-token ids of the real Qwen2.5-Omni tokenizer (the Thinker config's defaults use them).
QWEN_OMNI_TOKEN_IDS = {
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|vision_bos|>": 151652,
    "<|vision_eos|>": 151653,
    "<|IMAGE|>": 151655,
    "<|VIDEO|>": 151656,
}

# Audio (Whisper-style) and vision (Qwen2.5-VL ViT) encoders: identical in the 3B and 7B; their
# output width is the LLM's hidden size.
THINKER_AUDIO_SHAPE = dict(
    num_mel_bins=128,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    d_model=1280,
    max_source_positions=1500,
    n_window=100,
)
THINKER_VISION_SHAPE = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_FULL_OMNI_MODEL_TYPE = "qwen2_5_omni"
_THINKER_MODEL_TYPE = "qwen2_5_omni_thinker"


# --------------------------------------------------------------------------------------------
# Building a model from a config
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device; buffers are computed normally (on CPU).

    ``nn.Module.register_parameter`` is patched for the duration of the block, so each weight is
    moved to meta as soon as it is registered: weight initialisation then runs on meta (free),
    while buffer values computed in ``__init__`` (rotary frequencies, sinusoids) stay real.
    """
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _model_class(config):
    """The transformers class that implements ``config`` (Thinker or Qwen2 causal LM)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration, Qwen2ForCausalLM

    classes = {
        _THINKER_MODEL_TYPE: Qwen2_5OmniThinkerForConditionalGeneration,
        "qwen2": Qwen2ForCausalLM,
    }
    if config.model_type not in classes:
        raise ValueError(
            f"unsupported model_type {config.model_type!r}: merr1 builds {sorted(classes)} "
            f"(a full Qwen2.5-Omni config is read through its thinker_config)"
        )
    return classes[config.model_type]


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` or its YAML spelling (``"bf16"``, ``"bfloat16"``, ``"fp32"``, ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast parameters (not buffers) to ``dtype`` in place; tied parameters stay tied."""
    for param in model.parameters():
        if param.dtype != dtype and param.is_floating_point():
            param.data = param.data.to(dtype)
    return model


def build_model(
    config,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> nn.Module:
    """Instantiate the model for ``config`` with random weights (or as a meta skeleton).

    Args:
        config: a ``Qwen2_5OmniThinkerConfig`` or ``Qwen2Config``.
        dtype: parameter dtype, or its name (weights are initialised in float32, then cast).
        device: ``"meta"`` for a skeleton (parameters on meta, buffers real, see module
            docstring); any other device builds and initialises the weights there.
        seed: RNG seed of the initialisation (the global RNG state is left untouched).

    Returns:
        The model (train mode, as ``nn.Module`` starts; recipes set the mode they need).
    """
    cls = _model_class(config)
    if str(device) == "meta":
        with _parameters_on_meta():
            model = cls(config)
    else:
        device = torch.device(device)
        if device.type == "cuda":
            cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
        else:
            cuda_devices = []
        with torch.random.fork_rng(devices=cuda_devices), device:
            torch.manual_seed(seed)
            model = cls(config)
    return cast_parameters(model, resolve_dtype(dtype))


# --------------------------------------------------------------------------------------------
# Tiny models (tests, demos) and random-weight real shapes (benchmarks)
# --------------------------------------------------------------------------------------------


def tiny_thinker_config(
    vocab_size: int = TINY_VOCAB_SIZE,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
):
    """Config of a tiny Qwen2.5-Omni Thinker (text + audio + vision) that runs on CPU in ms.

    ``mrope_section`` must sum to head_dim / 2; it is derived from the head dim here.
    """
    from transformers import Qwen2_5OmniThinkerConfig

    head_dim = hidden_size // num_attention_heads
    ids = TINY_SPECIAL_TOKENS
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[1],
        ),
        audio_config=dict(
            num_mel_bins=16,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=64,
            d_model=32,
            max_source_positions=1500,
            n_window=100,
            output_dim=hidden_size,
        ),
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=ids["<|im_start|>"],
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split the rotary half-dim into (temporal, height, width) sections, as Qwen2.5-Omni does.

    For head_dim 128 this gives the released checkpoints' [16, 24, 24].
    """
    half = head_dim // 2
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    return [t_sec, h_sec, half - t_sec - h_sec]


@forwards_kwargs_to(tiny_thinker_config)
def tiny_thinker(
    seed: int = 0, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu", **config_kwargs
) -> nn.Module:
    """A randomly initialised tiny Qwen2.5-Omni Thinker (``Qwen2_5OmniThinkerForConditionalGeneration``).

    Args:
        seed: initialisation seed (same seed -> same weights, whatever ``dtype``/``device``).
        dtype: parameter dtype.
        device: where to build; ``"meta"`` for a skeleton to shard and load (module docstring).
        **config_kwargs: overrides of ``tiny_thinker_config`` (e.g. ``num_hidden_layers``).
    """
    return build_model(tiny_thinker_config(**config_kwargs), dtype=dtype, device=device, seed=seed)


def tiny_qwen2_config(
    vocab_size: int = TINY_VOCAB_SIZE,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    tie_word_embeddings: bool = True,
):
    """Config of a tiny text-only Qwen2 causal LM."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=TINY_SPECIAL_TOKENS["<|im_end|>"],
        pad_token_id=TINY_SPECIAL_TOKENS["<|endoftext|>"],
    )


@forwards_kwargs_to(tiny_qwen2_config)
def tiny_qwen2(
    seed: int = 0, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu", **config_kwargs
) -> nn.Module:
    """A randomly initialised tiny ``Qwen2ForCausalLM`` (arguments as ``tiny_thinker``)."""
    return build_model(tiny_qwen2_config(**config_kwargs), dtype=dtype, device=device, seed=seed)


def qwen2_5_omni_thinker_config(size: str = "7B", num_hidden_layers: int | None = None):
    """Config of the real 3B or 7B Thinker shape (public config.json facts), for random weights.

    Args:
        size: ``"3B"`` or ``"7B"``.
        num_hidden_layers: optional override of the LLM depth (e.g. a 2-layer slice for quick
            experiments); every other dimension keeps the real shape.
    """
    from transformers import Qwen2_5OmniThinkerConfig

    if size not in THINKER_TEXT_SHAPES:
        raise ValueError(f"unknown Thinker size {size!r}; choose one of {sorted(THINKER_TEXT_SHAPES)}")
    text = dict(THINKER_TEXT_SHAPES[size])
    tie_word_embeddings = text.pop("tie_word_embeddings")
    if num_hidden_layers is not None:
        text["num_hidden_layers"] = num_hidden_layers
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    text.update(
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)},
    )
    return Qwen2_5OmniThinkerConfig(
        text_config=text,
        audio_config=dict(THINKER_AUDIO_SHAPE, output_dim=text["hidden_size"]),
        vision_config=dict(THINKER_VISION_SHAPE, out_hidden_size=text["hidden_size"]),
        tie_word_embeddings=tie_word_embeddings,
        # Not declared by Qwen2_5OmniThinkerConfig but read by its mRoPE index (the real
        # checkpoints' config.json has them): without them every video prompt fails.
        vision_start_token_id=QWEN_OMNI_TOKEN_IDS["<|vision_bos|>"],
        vision_end_token_id=QWEN_OMNI_TOKEN_IDS["<|vision_eos|>"],
    )


def qwen2_5_omni_thinker_random(
    size: str = "7B",
    seed: int = 0,
    dtype: torch.dtype | str = torch.bfloat16,
    device: str | torch.device = "cpu",
    num_hidden_layers: int | None = None,
) -> nn.Module:
    """A Thinker with the real 3B/7B shape and random weights (benchmarks; no download needed)."""
    config = qwen2_5_omni_thinker_config(size, num_hidden_layers=num_hidden_layers)
    return build_model(config, dtype=dtype, device=device, seed=seed)


# --------------------------------------------------------------------------------------------
# Real models from a local HF checkpoint directory
# --------------------------------------------------------------------------------------------


def read_config_json(checkpoint_dir: str | Path) -> dict:
    """The raw ``config.json`` of a checkpoint directory (clear error if it is missing)."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint directory {checkpoint_dir}")
    return json.loads(path.read_text())


def is_full_omni_checkpoint(checkpoint_dir: str | Path) -> bool:
    """True for a full Qwen2.5-Omni checkpoint (Thinker under ``thinker.``, plus Talker/token2wav)."""
    return read_config_json(checkpoint_dir).get("model_type") == _FULL_OMNI_MODEL_TYPE


def load_thinker_config(checkpoint_dir: str | Path):
    """The Thinker's config from a full Qwen2.5-Omni checkpoint or a Thinker-only directory."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerConfig

    model_type = read_config_json(checkpoint_dir).get("model_type")
    if model_type == _FULL_OMNI_MODEL_TYPE:
        return Qwen2_5OmniConfig.from_pretrained(str(checkpoint_dir)).thinker_config
    if model_type == _THINKER_MODEL_TYPE:
        return Qwen2_5OmniThinkerConfig.from_pretrained(str(checkpoint_dir))
    raise ValueError(
        f"{checkpoint_dir} holds model_type {model_type!r}, not a Qwen2.5-Omni "
        f"({_FULL_OMNI_MODEL_TYPE!r}) or Thinker ({_THINKER_MODEL_TYPE!r}) checkpoint"
    )


def load_qwen2_config(checkpoint_dir: str | Path):
    """The config of a text-only Qwen2/Qwen2.5 checkpoint directory."""
    from transformers import Qwen2Config

    model_type = read_config_json(checkpoint_dir).get("model_type")
    if model_type != "qwen2":
        raise ValueError(f"{checkpoint_dir} holds model_type {model_type!r}, not a Qwen2/Qwen2.5 ('qwen2') checkpoint")
    return Qwen2Config.from_pretrained(str(checkpoint_dir))


def checkpoint_ties_word_embeddings(checkpoint_dir: str | Path) -> bool | None:
    """Whether a checkpoint's LM head is tied to its input embedding: True when it stores no
    ``lm_head.weight`` (nor ``thinker.lm_head.weight``), as HF omits a tied head; None when the
    directory holds no weights (nothing to detect, e.g. a config-only folder)."""
    from merr1.components.hf_checkpoint import checkpoint_weight_files

    try:
        names = checkpoint_weight_files(checkpoint_dir)
    except FileNotFoundError:
        return None
    return "lm_head.weight" not in names and "thinker.lm_head.weight" not in names


def tie_word_embeddings_from_checkpoint(config, checkpoint_dir: str | Path) -> None:
    """Set ``config.tie_word_embeddings`` (and its text config's) from the checkpoint's tensors.

    The checkpoint decides, not a table or the config: a Thinker config without the flag defaults
    to untied in transformers 5, so a tied checkpoint would otherwise get a randomly initialised
    head. A disagreement with the config is logged."""
    tied = checkpoint_ties_word_embeddings(checkpoint_dir)
    if tied is None:
        return
    if bool(getattr(config, "tie_word_embeddings", False)) != tied:
        logger.info(
            "%s: the checkpoint %s lm_head.weight, so the LM head is %s (its config says tie_word_embeddings=%s)",
            checkpoint_dir, "has no" if tied else "has an", "tied to the input embedding" if tied else "untied",
            getattr(config, "tie_word_embeddings", None),
        )  # fmt: skip
    config.tie_word_embeddings = tied
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text_config is not config:
        text_config.tie_word_embeddings = tied


def _from_checkpoint(
    config, checkpoint_dir: str | Path, dtype: torch.dtype | str, device: str | torch.device
) -> nn.Module:
    from merr1.components.hf_checkpoint import read_hf_state_dict

    tie_word_embeddings_from_checkpoint(config, checkpoint_dir)
    model = build_model(config, dtype=dtype, device="meta")
    if str(device) == "meta":
        return model
    state_dict = read_hf_state_dict(checkpoint_dir, model)
    # assign=True adopts the read tensors (no second copy); it unties tied weights, so re-tie.
    model.load_state_dict(state_dict, strict=True, assign=True)
    retie_word_embeddings(model)
    return model.to(device)


def qwen2_5_omni_thinker(
    checkpoint_dir: str | Path, dtype: torch.dtype | str = torch.bfloat16, device: str | torch.device = "cpu"
) -> nn.Module:
    """The Qwen2.5-Omni Thinker (3B or 7B) from a local HF checkpoint directory.

    Args:
        checkpoint_dir: a full Qwen2.5-Omni checkpoint (only its ``thinker.*`` tensors are read)
            or a Thinker-only directory written by ``hf_checkpoint.save_hf_checkpoint``.
        dtype: parameter dtype (float32 master weights under FSDP mixed precision, or bf16).
        device: ``"meta"`` returns a skeleton without reading any weight (module docstring).

    Returns:
        ``Qwen2_5OmniThinkerForConditionalGeneration`` (train mode; LM head tied exactly when the
        checkpoint has no ``lm_head.weight``).
    """
    return _from_checkpoint(load_thinker_config(checkpoint_dir), checkpoint_dir, dtype, device)


def qwen2_causal_lm(
    checkpoint_dir: str | Path, dtype: torch.dtype | str = torch.bfloat16, device: str | torch.device = "cpu"
) -> nn.Module:
    """A text-only Qwen2/Qwen2.5 ``Qwen2ForCausalLM`` from a local HF checkpoint directory."""
    return _from_checkpoint(load_qwen2_config(checkpoint_dir), checkpoint_dir, dtype, device)


def retie_word_embeddings(model: nn.Module) -> None:
    """Point ``lm_head.weight`` at the input embedding again if the config ties them."""
    if ties_word_embeddings(model):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def ties_word_embeddings(model: nn.Module) -> bool:
    """Whether the model's config ties ``lm_head`` to the input embedding."""
    return bool(model.config.tie_word_embeddings)


# --------------------------------------------------------------------------------------------
# Tokenizer / processor
# --------------------------------------------------------------------------------------------


# A tokenizer transformers can load needs one of these in the checkpoint directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_checkpoint_dir(checkpoint_dir: str | Path) -> Path:
    """Refuse a ``checkpoint_dir`` that is not an HF checkpoint folder, saying what is missing.

    The recipes read the tokenizer first, so without this an empty folder surfaced as
    transformers' "Couldn't instantiate the backend tokenizer".

    Returns:
        The directory as a ``Path``.

    Raises:
        FileNotFoundError: the directory does not exist.
        ValueError: it is empty, or lacks ``config.json``, the weights or the tokenizer files.
    """
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint_dir {path} does not exist (or is not a directory)")
    names = sorted(p.name for p in path.iterdir())
    expected = (
        "an HF checkpoint folder (config.json, model.safetensors or model.safetensors.index.json with its shards, "
        "tokenizer files such as tokenizer.json)"
    )
    if not names:
        raise ValueError(f"checkpoint_dir {path} is empty: expected {expected}")
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if "model.safetensors" not in names and "model.safetensors.index.json" not in names:
        missing.append("model.safetensors or model.safetensors.index.json")
    if not any(name in names for name in _TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {list(_TOKENIZER_FILES)})")
    if missing:
        shown = names[:10] + (["..."] if len(names) > 10 else [])
        raise ValueError(f"checkpoint_dir {path} lacks {', '.join(missing)}; it holds {shown}. Expected {expected}")
    return path


def checkpoint_tokenizer(checkpoint_dir: str | Path | None = None):
    """The tokenizer of a checkpoint directory (``check_checkpoint_dir`` first); ``None`` -> the
    shipped tiny tokenizer."""
    from merr1.components.tokenizer import load_tokenizer, tiny_tokenizer

    return tiny_tokenizer() if checkpoint_dir is None else load_tokenizer(check_checkpoint_dir(checkpoint_dir))


def checkpoint_processor(checkpoint_dir: str | Path):
    """The ``Qwen2_5OmniProcessor`` (tokenizer + audio feature extractor + image/video processor)
    of a real Qwen2.5-Omni checkpoint directory (the tiny models have no processor: their media
    tensors are made directly, see the data module)."""
    from transformers import Qwen2_5OmniProcessor

    if not Path(checkpoint_dir).is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {checkpoint_dir}")
    return Qwen2_5OmniProcessor.from_pretrained(str(checkpoint_dir))


# --------------------------------------------------------------------------------------------
# Module tree accessors (used by parallel.py and the recipes)
# --------------------------------------------------------------------------------------------


def _base(model: nn.Module) -> nn.Module:
    """``model.model`` of a Thinker/causal LM (works on FSDP-wrapped models too)."""
    return model.model


def is_thinker(model: nn.Module) -> bool:
    """True for a Qwen2.5-Omni Thinker (has audio and vision encoders)."""
    return hasattr(_base(model), "language_model") and hasattr(_base(model), "audio_tower")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The LLM's decoder layers: ``model.model.language_model.layers`` (Thinker) or
    ``model.model.layers`` (Qwen2)."""
    base = _base(model)
    return base.language_model.layers if is_thinker(model) else base.layers


def multimodal_encoders(model: nn.Module) -> list[nn.Module]:
    """The Thinker's audio tower and vision encoder (``[]`` for a text-only model)."""
    if not is_thinker(model):
        return []
    return [_base(model).audio_tower, _base(model).visual]


@contextlib.contextmanager
def logits_only_at(model: nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``model(...).logits`` holds only the rows at ``positions``.

    The Thinker computes ``lm_head`` on every position (it ignores ``logits_to_keep``); over a long
    audio/video prompt that is most of a step's memory ([B, L, V] with V = 152k). A forward
    pre-hook on ``lm_head`` gathers the wanted hidden states first, so the root module's forward
    (and its FSDP2 hooks) runs unchanged and gradients flow through the gather.

    Args:
        model: a Thinker or causal LM (FSDP2-sharded or not).
        positions: bool mask [B, L] of the positions whose logits are needed.

    Yields:
        nothing; ``model(...).logits`` inside the block is [N, V] with N = positions.sum(),
        rows in row-major order of ``positions`` (i.e. ``full_logits[positions]``).
    """
    if positions.dtype != torch.bool or positions.dim() != 2:
        raise ValueError(f"positions must be a bool mask [B, L], got {positions.dtype} {tuple(positions.shape)}")

    def gather_rows(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # [B, L, H]
        if hidden.shape[:2] != positions.shape:
            raise ValueError(f"positions mask {tuple(positions.shape)} does not match hidden states {tuple(hidden.shape[:2])}")
        return (hidden[positions.to(hidden.device)], *args[1:])  # [N, H]

    handle = model.get_output_embeddings().register_forward_pre_hook(gather_rows)
    try:
        yield
    finally:
        handle.remove()
