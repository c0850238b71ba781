"""Training-time model transforms (float8, activation checkpointing, torch.compile, FSDP2) and the
FSDP2 parameter gathering of a rollout phase (``gathered_parameters``; ``call_when_resharded``
and ``fsdp_forward_hooks_idle`` serve CUDA-graph decoding inside such a phase).

Apply them in this order (each one is optional), on the meta skeleton or a real model:

1. ``apply_float8(model, recipe=...)``: swap the LLM's large ``nn.Linear`` layers for torchao's
   ``Float8Linear`` (module filter: ``float8_module_filter``);
2. ``apply_activation_checkpointing(model)``: wrap each decoder layer (non-reentrant);
3. ``compile_decoder_layers(model)``: ``torch.compile`` each (wrapped) decoder layer;
4. ``shard_model(model, ...)``: FSDP2 ``fully_shard`` on the audio tower, the vision encoder, each
   decoder layer, then the root (embeddings, final norm, lm_head).

then load the weights (``hf_checkpoint.load_full_state_dict``) and build the optimizer. With
float8 tensorwise + float8 all-gather, call ``precompute_float8_scales(model)`` after every
optimizer step. Deviations from a textbook FSDP setup: the audio tower and vision encoder are their
own FSDP units, which keeps ``generate``/forward working on a resharded model (docs/design_notes.md,
"Rollout facts"); AC and compile touch only the LLM decoder layers (the encoders are small).

Train with ``use_cache=False``: with activation checkpointing a KV cache would be filled twice.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from merr1.components.models import decoder_layers, multimodal_encoders

logger = logging.getLogger(__name__)

FLOAT8_RECIPES = ("tensorwise", "rowwise")
# float8 GEMMs (torch._scaled_mm) need both matrix dims divisible by 16.
FLOAT8_DIM_MULTIPLE = 16


# --------------------------------------------------------------------------------------------
# float8
# --------------------------------------------------------------------------------------------


def float8_hardware_supported() -> bool:
    """True on a CUDA GPU with float8 tensor cores (compute capability >= 8.9: Ada, Hopper, ...)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def float8_module_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """The module filter of ``apply_float8``: which ``nn.Linear`` layers become float8.

    Converted: the linear layers inside the LLM's decoder layers (q/k/v/o projections, MLP
    gate/up/down) whose ``in_features`` and ``out_features`` are both multiples of 16.
    Never converted: ``lm_head`` (the logits feed the loss and log-probs; float8 there costs
    accuracy for one GEMM), the audio tower and vision encoder (small GEMMs where the casts cost
    more than they save; their patch/conv inputs are not float8-friendly), and any layer with a
    dimension that is not a multiple of 16 (``torch._scaled_mm`` rejects it).

    Returns:
        ``fn(module, fqn) -> bool`` as torchao's ``module_filter_fn`` expects.
    """
    allowed = {id(m) for layer in decoder_layers(model) for m in layer.modules() if isinstance(m, nn.Linear)}

    def module_filter(module: nn.Module, fqn: str) -> bool:
        return (
            id(module) in allowed
            and module.in_features % FLOAT8_DIM_MULTIPLE == 0
            and module.out_features % FLOAT8_DIM_MULTIPLE == 0
        )

    return module_filter


def apply_float8(
    model: nn.Module,
    *,
    recipe: str = "tensorwise",
    enable_fsdp_float8_all_gather: bool = False,
    emulate: bool = False,
) -> list[str]:
    """Convert the LLM's large linear layers to torchao float8 training (in place).

    Args:
        model: Thinker or Qwen2 model, before activation checkpointing, compile and sharding.
        recipe: ``"tensorwise"`` (one dynamic scale per tensor) or ``"rowwise"`` (per-row scales,
            more accurate, a bit slower).
        enable_fsdp_float8_all_gather: tensorwise only: FSDP2 all-gathers the weights in float8
            (half the bf16 traffic); call ``precompute_float8_scales`` after each optimizer step.
        emulate: run float8 numerics through torchao's emulation on hardware without float8
            (CPU, SM < 8.9). For tests only: no speed-up.

    Returns:
        The fully qualified names of the converted layers.

    Raises:
        ValueError: unknown recipe, all-gather with rowwise, or no float8 hardware without ``emulate``.
    """
    if recipe not in FLOAT8_RECIPES:
        raise ValueError(f"unknown float8 recipe {recipe!r}; choose one of {FLOAT8_RECIPES}")
    if enable_fsdp_float8_all_gather and recipe != "tensorwise":
        raise ValueError("float8 all-gather (enable_fsdp_float8_all_gather) needs the 'tensorwise' recipe")
    if not emulate and not float8_hardware_supported():
        found = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
        raise ValueError(
            f"float8 training needs a CUDA GPU with compute capability >= 8.9 (H100, H200, L40S, RTX 4090); "
            f"found {found}. Disable float8, or set emulate=True for tests (numerics only, no speed-up)."
        )
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)
    config = dataclasses.replace(config, enable_fsdp_float8_all_gather=enable_fsdp_float8_all_gather, emulate=emulate)
    module_filter = float8_module_filter(model)
    converted = [
        fqn for fqn, module in model.named_modules() if isinstance(module, nn.Linear) and module_filter(module, fqn)
    ]
    convert_to_float8_training(model, config=config, module_filter_fn=module_filter)
    logger.info("float8 %s: converted %d linear layers", recipe, len(converted))
    return converted


def precompute_float8_scales(model: nn.Module) -> None:
    """After ``optimizer.step()``: compute all float8 weight scales in one pass (tensorwise +
    float8 all-gather only; a no-op otherwise). Saves one small all-reduce per layer per step."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp
    from torchao.float8.float8_linear import Float8Linear

    if any(isinstance(m, Float8Linear) and m.config.enable_fsdp_float8_all_gather for m in model.modules()):
        precompute_float8_dynamic_scale_for_fsdp(model)


# --------------------------------------------------------------------------------------------
# Activation checkpointing and compile
# --------------------------------------------------------------------------------------------


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every LLM decoder layer in torch's non-reentrant checkpoint wrapper (in place).

    Only the layer inputs are kept in forward; each layer's activations are recomputed in
    backward (about one extra forward of compute). State-dict keys are unchanged.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def compile_decoder_layers(model: nn.Module, *, backend: str = "inductor", fullgraph: bool = False) -> None:
    """``torch.compile`` each LLM decoder layer in place (``nn.Module.compile``: keys unchanged).

    Per-layer compile keeps compile time flat in depth (all layers share one graph) and composes
    with FSDP2's per-layer hooks. ``backend="aot_eager"`` exercises the path without a C++
    toolchain (tests).
    """
    for layer in decoder_layers(model):
        layer.compile(backend=backend, fullgraph=fullgraph)


# --------------------------------------------------------------------------------------------
# FSDP2
# --------------------------------------------------------------------------------------------


def shard_model(
    model: nn.Module,
    *,
    mesh=None,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> nn.Module:
    """Shard ``model`` with FSDP2 (in place; also returned).

    Units: the audio tower, the vision encoder, each decoder layer, then the root (input
    embeddings, final norm, lm_head; tied embeddings stay in one unit).

    Args:
        model: Thinker or Qwen2 model (real or meta; float8/AC/compile already applied).
        mesh: 1-D ``DeviceMesh`` over the data-parallel ranks (``None``: FSDP's default, all ranks).
        param_dtype: compute dtype of the all-gathered parameters (``None``: keep the stored dtype,
            e.g. float32 for exact tests). The sharded (optimizer-visible) parameters keep theirs.
        reduce_dtype: dtype of the gradient reduce-scatter.
        reshard_after_forward: free the gathered parameters after forward (ZeRO-3); ``False``
            keeps them until backward (ZeRO-2-like, more memory, fewer all-gathers).
        cpu_offload: keep sharded parameters, gradients and optimizer states on CPU.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs = dict(
        mesh=mesh,
        reshard_after_forward=reshard_after_forward,
        mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
        offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    )
    for encoder in multimodal_encoders(model):
        fully_shard(encoder, **kwargs)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


# --------------------------------------------------------------------------------------------
# Gather once for a rollout phase
# --------------------------------------------------------------------------------------------


# Roots of FSDP modules whose parameters are currently gathered (makes gathering re-entrant).
_GATHERED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
# Root -> callbacks to run once when its current gathered block ends (``call_when_resharded``).
_ON_RESHARD: "weakref.WeakKeyDictionary[nn.Module, list[Callable[[], None]]]" = weakref.WeakKeyDictionary()


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_fsdp_sharded(model: nn.Module) -> bool:
    """True if ``model`` (or a submodule) is FSDP2-sharded."""
    return bool(_fsdp_modules(model))


def call_when_resharded(model: nn.Module, callback: Callable[[], None]) -> None:
    """Run ``callback`` once when the current ``gathered_parameters`` block of ``model`` ends,
    just before its parameters are resharded (at once if no block is open or the model is not
    sharded). Used to free state that points into the gathered parameters (decode CUDA graphs).
    """
    modules = _fsdp_modules(model)
    if not modules or modules[0] not in _GATHERED:
        callback()
        return
    _ON_RESHARD.setdefault(modules[0], []).append(callback)


@contextmanager
def fsdp_forward_hooks_idle(model: nn.Module) -> Iterator[None]:
    """Inside ``gathered_parameters``: make FSDP2's forward hooks skip their bookkeeping.

    Decoding calls decoder layers directly; their FSDP pre-forward hook would then make each layer
    in turn the "forward root", which makes FSDP's all-gather streams wait on the current stream.
    Inside a CUDA-graph capture that forks those streams into the capture and the capture fails.
    Here every FSDP state is put in the state FSDP uses while activation checkpointing recomputes
    a forward in backward (``PRE_BACKWARD``), where the hooks only check that the parameters are
    unsharded (they are). The previous states are restored on exit. A no-op without FSDP.
    """
    from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

    states = [m._get_fsdp_state() for m in _fsdp_modules(model)]
    saved = [state._training_state for state in states]
    for state in states:
        state._training_state = TrainingState.PRE_BACKWARD
    try:
        yield
    finally:
        for state, training_state in zip(states, saved):
            state._training_state = training_state


@contextmanager
def gathered_parameters(model: nn.Module) -> Iterator[None]:
    """All-gather an FSDP2-sharded model's parameters once for a whole rollout phase.

    Inside the context every FSDP module is unsharded and set not to reshard after forward, so
    decoding steps do no all-gathers (the default is one per FSDP module per step). On exit the
    previous reshard-after-forward settings are restored and every module is resharded, so
    training continues as before (a training step then does exactly the all-gathers it would do
    on a model that never generated). A no-op for unsharded models and when already gathered.
    Run only no-grad work inside (rollouts, old/reference log-probs), not a training step.

    Args:
        model: the policy; FSDP modules are found among ``model.modules()``.
    """
    fsdp_modules = _fsdp_modules(model)
    if not fsdp_modules or fsdp_modules[0] in _GATHERED:
        yield
        return
    root = fsdp_modules[0]
    # Decoding calls submodules (model.model, lm_head) directly. Initialise the FSDP root now, as
    # its first forward would, or the first decoder layer to run would claim to be the root.
    root._get_fsdp_state()._lazy_init()
    saved = _reshard_settings(fsdp_modules)
    handles = [m.unshard(async_op=True) for m in fsdp_modules]
    for handle in handles:
        handle.wait()
    root.set_reshard_after_forward(False)  # recursive
    _GATHERED.add(root)
    try:
        yield
    finally:
        _GATHERED.discard(root)
        for callback in _ON_RESHARD.pop(root, []):
            callback()
        _restore_reshard_settings(saved)
        _forget_post_forward_order(fsdp_modules)
        for m in fsdp_modules:
            m.reshard()


def _reshard_settings(fsdp_modules: list[nn.Module]) -> list[tuple[object, bool, list]]:
    """Snapshot each FSDP state's reshard-after-forward setting (what set_reshard_after_forward edits)."""
    saved = []
    for m in fsdp_modules:
        state = m._get_fsdp_state()
        groups = [(g, g.post_forward_mesh_info) for g in _param_groups(state)]
        saved.append((state, state._auto_reshard_after_forward, groups))
    return saved


def _param_groups(state) -> list:
    """An FSDP state's parameter groups: ``_fsdp_param_groups`` (torch 2.13) or the single
    ``_fsdp_param_group`` (torch 2.11, the GPU machine's image; None for a unit without parameters)."""
    if hasattr(state, "_fsdp_param_groups"):
        return list(state._fsdp_param_groups)
    return [state._fsdp_param_group] if state._fsdp_param_group is not None else []


def _forget_post_forward_order(fsdp_modules: list[nn.Module]) -> None:
    """Drop the forward order FSDP recorded during decoding (it is only cleared by a backward).

    FSDP2 prefetches, in backward, the module that ran forward just before; left in place, the
    decoding steps' records make the next training backward all-gather one module too many.
    """
    for m in fsdp_modules:
        for group in _param_groups(m._get_fsdp_state()):
            group._post_forward_indices.clear()
            group.comm_ctx.post_forward_order.clear()


def _restore_reshard_settings(saved: list[tuple[object, bool, list]]) -> None:
    for state, auto, groups in saved:
        state._auto_reshard_after_forward = auto
        for group, mesh_info in groups:
            group.post_forward_mesh_info = mesh_info
