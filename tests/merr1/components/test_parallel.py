import pytest
import torch
from model_fixtures import multimodal_batch, text_batch
from numerics import assert_close_to_scale
from two_ranks import run_two_ranks

from merr1.components.models import tiny_qwen2, tiny_thinker
from merr1.components.parallel import (
    apply_activation_checkpointing,
    apply_float8,
    compile_decoder_layers,
    float8_hardware_supported,
    float8_module_filter,
    precompute_float8_scales,
    shard_model,
)

LLM_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            grads[name.replace("_checkpoint_wrapped_module.", "")] = grad.detach().clone()
    return loss.detach().clone(), grads


def _two_rank_scenario(out: dict) -> None:
    """Runs on each of 2 gloo ranks; every rank sees the same batch, so FSDP's gradient average
    equals the single-process gradient."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from merr1.components.hf_checkpoint import gather_full_state_dict

    batch = multimodal_batch(tiny_thinker(device="meta"))
    out["ref_loss"], out["ref_grads"] = _loss_and_grads(tiny_thinker(), batch)

    model = shard_model(tiny_thinker(), param_dtype=None)
    out["fsdp_units"] = [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]
    out["fsdp_loss"], out["fsdp_grads"] = _loss_and_grads(model, batch)
    with torch.no_grad():
        out["fsdp_resharded_loss"] = model(**batch).loss  # forward again on the resharded model
        prompt = {k: v for k, v in batch.items() if k not in ("labels", "use_cache")}
        out["ref_generate"] = tiny_thinker().generate(**prompt, max_new_tokens=3, do_sample=False)
        # HF generate on a resharded Thinker needs the encoders as FSDP units (docs/design_notes.md, "Rollout facts")
        out["fsdp_generate"] = model.generate(**prompt, max_new_tokens=3, do_sample=False)

    model = tiny_thinker()
    apply_activation_checkpointing(model)
    shard_model(model, param_dtype=None)
    out["fsdp_ac_loss"], out["fsdp_ac_grads"] = _loss_and_grads(model, batch)

    model = shard_model(tiny_thinker(), param_dtype=torch.bfloat16, reshard_after_forward=False)
    out["fsdp_bf16_loss"], _ = _loss_and_grads(model, batch)
    out["fsdp_bf16_stored_dtypes"] = {p.dtype for p in model.parameters()}

    tbatch = text_batch()
    out["qwen2_ref_loss"], out["qwen2_ref_grads"] = _loss_and_grads(tiny_qwen2(), tbatch)
    model = shard_model(tiny_qwen2(), param_dtype=None)
    out["qwen2_fsdp_loss"], out["qwen2_fsdp_grads"] = _loss_and_grads(model, tbatch)
    out["qwen2_tied"] = model.lm_head.weight is model.model.embed_tokens.weight

    for recipe, all_gather in (("tensorwise", True), ("rowwise", False)):
        model = tiny_thinker()
        apply_float8(model, recipe=recipe, enable_fsdp_float8_all_gather=all_gather, emulate=True)
        apply_activation_checkpointing(model)
        shard_model(model, param_dtype=torch.bfloat16)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(2):
            losses.append(_loss_and_grads(model, batch)[0])
            optimizer.step()
            precompute_float8_scales(model)
        out[f"float8_{recipe}_losses"] = torch.stack(losses)
        state_dict = gather_full_state_dict(model, torch.bfloat16)
        if dist.get_rank() == 0:
            out[f"float8_{recipe}_saved_types"] = {type(t) for t in state_dict.values()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_two_ranks(_two_rank_scenario, tmp_path_factory.mktemp("fsdp"))


def _assert_grads_close(grads, ref, rtol=1e-5):
    """Each gradient within ``rtol`` of its largest entry. The default 1e-5: the same float32
    math with sums split over shards / recomputed (AC) / traced (aot_eager); the sums run over a
    few hundred terms (batch x sequence, hidden 64), whose round-off is ~n x 6e-8 of the largest
    term. Measured: bit-identical with 1 and 2 threads."""
    assert set(grads) == set(ref)
    for name, grad in grads.items():
        assert_close_to_scale(grad, ref[name], rtol=rtol, what=name)


def test_fsdp_units_are_encoders_each_decoder_layer_and_root(two_ranks):
    assert two_ranks["fsdp_units"] == [
        "",
        "model.audio_tower",
        "model.visual",
        "model.language_model.layers.0",
        "model.language_model.layers.1",
    ]


def test_sharded_loss_and_grads_equal_unsharded(two_ranks):
    torch.testing.assert_close(two_ranks["fsdp_loss"], two_ranks["ref_loss"], atol=1e-6, rtol=0)
    _assert_grads_close(two_ranks["fsdp_grads"], two_ranks["ref_grads"])
    torch.testing.assert_close(two_ranks["fsdp_resharded_loss"], two_ranks["ref_loss"], atol=1e-6, rtol=0)


def test_hf_generate_with_media_works_on_the_resharded_model(two_ranks):
    assert torch.equal(two_ranks["fsdp_generate"], two_ranks["ref_generate"])


def test_sharded_activation_checkpointing_gives_same_grads(two_ranks):
    torch.testing.assert_close(two_ranks["fsdp_ac_loss"], two_ranks["ref_loss"], atol=1e-6, rtol=0)
    _assert_grads_close(two_ranks["fsdp_ac_grads"], two_ranks["ref_grads"])


def test_sharded_bf16_mixed_precision_keeps_float32_master_weights(two_ranks):
    # bf16 compute: ~2^-8 relative per op; the loss (~6.2) moved by 1.5e-4 measured, 0.05 = 0.8%.
    torch.testing.assert_close(two_ranks["fsdp_bf16_loss"], two_ranks["ref_loss"], atol=0.05, rtol=0)
    assert two_ranks["fsdp_bf16_stored_dtypes"] == {torch.float32}


def test_sharded_tied_text_model(two_ranks):
    torch.testing.assert_close(two_ranks["qwen2_fsdp_loss"], two_ranks["qwen2_ref_loss"], atol=1e-6, rtol=0)
    _assert_grads_close(two_ranks["qwen2_fsdp_grads"], two_ranks["qwen2_ref_grads"])
    assert two_ranks["qwen2_tied"]


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_sharded_float8_trains_and_saves_plain_tensors(two_ranks, recipe):
    losses = two_ranks[f"float8_{recipe}_losses"]
    assert torch.isfinite(losses).all()
    # float8 noise only: e4m3 has 3 mantissa bits, measured 1.4e-3 on a loss of ~6.2; 0.05 = 0.8%.
    torch.testing.assert_close(losses[0], two_ranks["ref_loss"], atol=0.05, rtol=0)
    assert losses[1] < losses[0]
    assert two_ranks[f"float8_{recipe}_saved_types"] == {torch.Tensor}


def test_activation_checkpointing_same_grads_and_keys():
    batch = multimodal_batch(tiny_thinker(device="meta"))
    ref_loss, ref_grads = _loss_and_grads(tiny_thinker(), batch)
    model = tiny_thinker()
    keys = list(model.state_dict())
    apply_activation_checkpointing(model)
    loss, grads = _loss_and_grads(model, batch)
    assert torch.equal(loss, ref_loss)
    _assert_grads_close(grads, ref_grads)
    assert list(model.state_dict()) == keys


def test_float8_module_filter_converts_only_llm_decoder_linears():
    model = tiny_thinker()
    converted = apply_float8(model, recipe="tensorwise", emulate=True)
    assert converted == [f"model.language_model.layers.{i}.{name}" for i in range(2) for name in LLM_LINEARS]
    from torchao.float8.float8_linear import Float8Linear

    float8_modules = [fqn for fqn, m in model.named_modules() if isinstance(m, Float8Linear)]
    assert float8_modules == converted
    assert not any(name.startswith(("lm_head", "model.audio_tower", "model.visual")) for name in float8_modules)


@pytest.mark.parametrize(
    "intermediate_size, expected_mlp",
    [
        (128, ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
        (40, ()),  # 40 is not a multiple of 16: gate/up (out 40) and down (in 40) stay bf16
    ],
)
def test_float8_module_filter_requires_dims_divisible_by_16(intermediate_size, expected_mlp):
    model = tiny_thinker(device="meta", intermediate_size=intermediate_size)
    keep = float8_module_filter(model)
    layer = model.model.language_model.layers[0]
    converted = tuple(name for name in LLM_LINEARS if keep(layer.get_submodule(name), name))
    assert converted == LLM_LINEARS[:4] + expected_mlp


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_forward_backward_on_cpu_with_emulation(recipe):
    batch = multimodal_batch(tiny_thinker(device="meta"))
    ref_loss, _ = _loss_and_grads(tiny_thinker(), batch)
    model = tiny_thinker()
    apply_float8(model, recipe=recipe, emulate=True)
    loss, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(loss, ref_loss, atol=0.05, rtol=0)  # float8 noise (see above): 0.8% of ~6.2
    assert grads["model.language_model.layers.0.mlp.up_proj.weight"].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not float8_hardware_supported(), reason="needs a GPU with float8 (SM >= 8.9)")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_on_gpu_hardware(recipe):
    model = tiny_thinker(dtype=torch.bfloat16, device="cuda")
    apply_float8(model, recipe=recipe)
    compile_decoder_layers(model)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in multimodal_batch(model).items()}
    batch["input_features"] = batch["input_features"].bfloat16()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(recipe="blockwise", emulate=True), "unknown float8 recipe 'blockwise'"),
        (dict(recipe="rowwise", enable_fsdp_float8_all_gather=True, emulate=True), "needs the 'tensorwise' recipe"),
    ],
)
def test_float8_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_float8(tiny_thinker(device="meta"), **kwargs)


@pytest.mark.skipif(float8_hardware_supported(), reason="this machine has float8 hardware")
def test_float8_without_hardware_raises_unless_emulated():
    with pytest.raises(ValueError, match="compute capability >= 8.9"):
        apply_float8(tiny_thinker(device="meta"), recipe="tensorwise")


def test_precompute_float8_scales_is_a_no_op_without_float8_all_gather():
    model = tiny_thinker()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    precompute_float8_scales(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_compile_decoder_layers_same_loss_and_grads():
    torch._dynamo.reset()
    batch = multimodal_batch(tiny_thinker(device="meta"))
    ref_loss, ref_grads = _loss_and_grads(tiny_thinker(), batch)
    model = tiny_thinker()
    apply_activation_checkpointing(model)
    compile_decoder_layers(model, backend="aot_eager")
    loss, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.slow
def test_compile_decoder_layers_inductor():
    torch._dynamo.reset()
    batch = multimodal_batch(tiny_thinker(device="meta"))
    ref_loss, ref_grads = _loss_and_grads(tiny_thinker(), batch)
    model = tiny_thinker()
    compile_decoder_layers(model)
    loss, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    _assert_grads_close(grads, ref_grads, rtol=1e-4)  # inductor fuses and reorders the sums


def test_call_when_resharded_and_idle_hooks_without_fsdp():
    """Unsharded models: the callback runs at once, the idle-hooks context is a no-op."""
    from merr1.components.parallel import call_when_resharded, fsdp_forward_hooks_idle, is_fsdp_sharded

    model = tiny_qwen2(seed=0)
    calls = []
    call_when_resharded(model, lambda: calls.append("now"))
    assert calls == ["now"] and not is_fsdp_sharded(model)
    with fsdp_forward_hooks_idle(model):
        model(input_ids=torch.tensor([[11, 12]]))
