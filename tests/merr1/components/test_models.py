import json

import pytest
import torch
from model_fixtures import make_fake_omni_checkpoint, multimodal_batch, text_batch
from numerics import assert_close_to_scale

from merr1.components.hf_checkpoint import save_hf_checkpoint
from merr1.components.models import (
    build_model,
    logits_only_at,
    THINKER_TEXT_SHAPES,
    checkpoint_processor,
    checkpoint_tokenizer,
    decoder_layers,
    is_thinker,
    multimodal_encoders,
    qwen2_5_omni_thinker,
    qwen2_5_omni_thinker_config,
    qwen2_5_omni_thinker_random,
    qwen2_causal_lm,
    resolve_dtype,
    tiny_qwen2,
    tiny_thinker,
)
from merr1.components.tokenizer import tiny_tokenizer


def _num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_tiny_thinker_forward_backward_with_audio_image_video():
    model = tiny_thinker()
    batch = multimodal_batch(model)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name in (
        "model.audio_tower.conv1.weight",
        "model.visual.patch_embed.proj.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("media_key", ["input_features", "pixel_values", "pixel_values_videos"])
def test_tiny_thinker_loss_depends_on_each_modality(media_key):
    model = tiny_thinker()
    batch = multimodal_batch(model)
    with torch.no_grad():
        loss = model(**batch).loss
        batch[media_key] = batch[media_key] + 1.0
        assert model(**batch).loss != loss


@pytest.mark.parametrize("builder", ["thinker", "qwen2"])
def test_logits_only_at_equals_full_logits_rows_and_their_gradients(builder):
    model = tiny_thinker() if builder == "thinker" else tiny_qwen2()
    batch = multimodal_batch(model) if builder == "thinker" else text_batch()
    batch.pop("labels", None)
    positions = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    positions[0, -3:] = True
    positions[1, 2] = True
    full = model(**batch).logits
    full[positions].square().sum().backward()
    full_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    with logits_only_at(model, positions):
        rows = model(**batch).logits
    assert rows.shape == (4, full.shape[-1])
    # Same rows of the same float32 GEMM; the sum over rows in the lm_head gradient runs in another
    # order (4 rows vs all rows with zeros), so compare relative to the largest entry.
    assert_close_to_scale(rows, full[positions], rtol=1e-5, what="logit rows")
    rows.square().sum().backward()
    assert_close_to_scale(model.lm_head.weight.grad, full_grad, rtol=1e-5, what="lm_head gradient")
    assert model(**batch).logits.shape == full.shape  # the hook is gone after the block


def test_logits_only_at_rejects_bad_masks():
    model = tiny_qwen2()
    with pytest.raises(ValueError, match="bool mask"):
        with logits_only_at(model, torch.ones(2, 3, dtype=torch.long)):
            pass
    batch = text_batch()
    batch.pop("labels", None)
    with pytest.raises(ValueError, match="does not match"):
        with logits_only_at(model, torch.ones(1, 2, dtype=torch.bool)):
            model(**batch)


def test_tiny_qwen2_forward_backward():
    model = tiny_qwen2()
    loss = model(**text_batch()).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("builder", [tiny_thinker, tiny_qwen2])
def test_meta_skeleton_has_meta_parameters_and_real_buffers(builder):
    real, meta = builder(), builder(device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    real_buffers = dict(real.named_buffers())
    assert len(real_buffers) > 0
    for name, buffer in meta.named_buffers():
        assert torch.equal(buffer, real_buffers[name]), name
    assert [n for n, _ in meta.named_parameters()] == [n for n, _ in real.named_parameters()]


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = tiny_thinker(seed=1), tiny_thinker(seed=1), tiny_thinker(seed=2)
    pa, pb, pc = (m.model.language_model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_bf16_parameters_are_the_rounded_float32_ones_and_buffers_stay_float32():
    full, half = tiny_thinker(), tiny_thinker(dtype=torch.bfloat16)
    for (name, p32), p16 in zip(full.named_parameters(), half.parameters()):
        assert p16.dtype == torch.bfloat16
        assert torch.equal(p32.to(torch.bfloat16), p16), name
    assert {b.dtype for b in half.buffers()} == {torch.float32}


@pytest.mark.parametrize(
    "name, expected",
    [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp32", torch.float32), ("float32", torch.float32),
     ("fp16", torch.float16), (torch.bfloat16, torch.bfloat16)],
)
def test_resolve_dtype_accepts_yaml_spellings(name, expected):
    assert resolve_dtype(name) is expected


def test_resolve_dtype_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_builders_accept_dtype_names():
    assert {p.dtype for p in tiny_qwen2(dtype="bf16", device="meta").parameters()} == {torch.bfloat16}


# Hand-derived: per layer q (h*h + h bias), k and v (h*kv + kv each, kv = num_kv_heads * 128),
# o (h*h), MLP (3*h*i), 2 RMSNorms (2*h).
@pytest.mark.parametrize(
    "size, per_layer, num_layers, embedding",
    [
        ("7B", 3584**2 + 3584 + 2 * (3584 * 512 + 512) + 3584**2 + 3 * 3584 * 18944 + 2 * 3584, 28, 152064 * 3584),
        ("3B", 2048**2 + 2048 + 2 * (2048 * 256 + 256) + 2048**2 + 3 * 2048 * 11008 + 2 * 2048, 36, 151936 * 2048),
    ],
)
def test_real_thinker_shapes_parameter_counts(size, per_layer, num_layers, embedding):
    model = qwen2_5_omni_thinker_random(size, device="meta")
    layers = decoder_layers(model)
    assert len(layers) == num_layers
    assert _num_params(layers[0]) == per_layer
    assert _num_params(layers) == per_layer * num_layers
    assert model.model.language_model.embed_tokens.weight.numel() == embedding
    tied = THINKER_TEXT_SHAPES[size]["tie_word_embeddings"]
    assert (model.lm_head.weight is model.model.language_model.embed_tokens.weight) == tied


def test_real_thinker_config_facts_and_depth_override():
    config = qwen2_5_omni_thinker_config("7B", num_hidden_layers=2)
    text = config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (3584, 28, 4)
    assert text.num_hidden_layers == 2
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert config.audio_config.output_dim == config.vision_config.out_hidden_size == 3584


def test_real_thinker_config_has_the_vision_ids_its_mrope_index_reads():
    """A video prompt on the real-shape config: the mRoPE index needs vision_start_token_id."""
    config = qwen2_5_omni_thinker_config("3B", num_hidden_layers=1)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert (config.audio_token_index, config.video_token_index) == (151646, 151656)
    model = build_model(config, device="meta")
    ids = torch.tensor([[151644, 151652, 151656, 151656, 151653, 9707, 151645]])
    position_ids, deltas = model.get_rope_index(
        ids, video_grid_thw=torch.tensor([[1, 2, 4]]), attention_mask=torch.ones_like(ids),
        second_per_grids=torch.tensor([1.0]),
    )
    assert position_ids.shape == (3, 1, 7) and deltas.shape == (1, 1)


def test_unknown_real_size_raises():
    with pytest.raises(ValueError, match="unknown Thinker size '9B'"):
        qwen2_5_omni_thinker_config("9B")


@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
    """Thinker-only, full-Omni and Qwen2 checkpoint directories of seeded tiny models."""
    root = tmp_path_factory.mktemp("ckpts")
    thinker, qwen2 = tiny_thinker(seed=7), tiny_qwen2(seed=7)
    save_hf_checkpoint(thinker, root / "thinker", dtype=torch.float32, tokenizer=tiny_tokenizer())
    save_hf_checkpoint(qwen2, root / "qwen2", dtype=torch.float32, tokenizer=tiny_tokenizer())
    make_fake_omni_checkpoint(thinker, root / "omni", tiny_tokenizer())
    return {"thinker": root / "thinker", "omni": root / "omni", "qwen2": root / "qwen2", "models": (thinker, qwen2)}


@pytest.mark.parametrize("kind", ["thinker", "omni"])
def test_qwen2_5_omni_thinker_builder_loads_thinker_only_and_full_omni_dirs(checkpoint_dirs, kind):
    reference = checkpoint_dirs["models"][0]
    model = qwen2_5_omni_thinker(checkpoint_dirs[kind], dtype=torch.float32)
    batch = multimodal_batch(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)


def test_qwen2_causal_lm_builder_loads_and_keeps_tied_embeddings(checkpoint_dirs):
    reference = checkpoint_dirs["models"][1]
    model = qwen2_causal_lm(checkpoint_dirs["qwen2"], dtype=torch.float32)
    batch = text_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_builder_dtype_argument(checkpoint_dirs):
    model = qwen2_5_omni_thinker(checkpoint_dirs["thinker"])  # default bf16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_meta_builder_reads_no_weights(checkpoint_dirs, tmp_path):
    (tmp_path / "config.json").write_text((checkpoint_dirs["omni"] / "config.json").read_text())
    model = qwen2_5_omni_thinker(tmp_path, device="meta")  # no safetensors in tmp_path: not read
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize(
    "builder, kind, message",
    [
        (qwen2_5_omni_thinker, "qwen2", "not a Qwen2.5-Omni"),
        (qwen2_causal_lm, "thinker", "not a Qwen2/Qwen2.5"),
        (qwen2_causal_lm, "omni", "not a Qwen2/Qwen2.5"),
    ],
)
def test_builder_rejects_another_model_type(checkpoint_dirs, builder, kind, message):
    with pytest.raises(ValueError, match=message):
        builder(checkpoint_dirs[kind], device="meta")


def test_builder_missing_config_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        qwen2_5_omni_thinker(tmp_path)


def test_full_omni_config_is_not_mistaken_for_the_thinker(checkpoint_dirs):
    assert json.loads((checkpoint_dirs["omni"] / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    assert json.loads((checkpoint_dirs["thinker"] / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"


def test_checkpoint_tokenizer_tiny_and_from_dir(checkpoint_dirs):
    assert checkpoint_tokenizer() is tiny_tokenizer()
    text = "<|im_start|>user\nhappy <|AUDIO|><|im_end|>"
    for kind in ("thinker", "omni"):
        assert checkpoint_tokenizer(checkpoint_dirs[kind])(text).input_ids == tiny_tokenizer()(text).input_ids


def test_checkpoint_processor_missing_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        checkpoint_processor(tmp_path / "absent")


def test_module_tree_accessors():
    thinker, qwen2 = tiny_thinker(device="meta"), tiny_qwen2(device="meta")
    assert is_thinker(thinker) and not is_thinker(qwen2)
    assert decoder_layers(thinker) is thinker.model.language_model.layers
    assert decoder_layers(qwen2) is qwen2.model.layers
    assert multimodal_encoders(thinker) == [thinker.model.audio_tower, thinker.model.visual]
    assert multimodal_encoders(qwen2) == []


@pytest.mark.parametrize(
    "files, message",
    [
        ([], r"checkpoint_dir .* is empty: expected an HF checkpoint folder \(config.json, model.safetensors"),
        (["model.safetensors"], r"lacks config.json, a tokenizer \(one of \['tokenizer.json'"),
        (["config.json", "tokenizer.json"], r"lacks model.safetensors or model.safetensors.index.json; it holds"),
        (["notes.txt"], r"lacks config.json, model.safetensors or .*, a tokenizer .*; it holds \['notes.txt'\]"),
    ],
)
def test_checkpoint_dir_that_is_not_a_checkpoint_is_refused_before_the_tokenizer(tmp_path, files, message):
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(ValueError, match=message):
        checkpoint_tokenizer(tmp_path)


def test_missing_checkpoint_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_dir .*absent does not exist"):
        checkpoint_tokenizer(tmp_path / "absent")
