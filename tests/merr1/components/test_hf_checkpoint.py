import json

import pytest
import torch
from model_fixtures import FAKE_TALKER_SHAPES, make_fake_omni_checkpoint, multimodal_batch, text_batch
from two_ranks import run_two_ranks

from merr1.components.hf_checkpoint import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    THINKER_PREFIX,
    checkpoint_weight_files,
    hf_to_model_key,
    load_full_state_dict,
    load_hf_checkpoint,
    model_to_hf_key,
    read_hf_state_dict,
    save_hf_checkpoint,
)
from merr1.components.models import (
    qwen2_5_omni_thinker,
    qwen2_5_omni_thinker_random,
    qwen2_causal_lm,
    tiny_qwen2,
    tiny_thinker,
)
from merr1.components.tokenizer import tiny_tokenizer


def _hf_thinker(path):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)


def _hf_qwen2(path):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _train_step(model, batch, lr=0.5):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad


@pytest.mark.parametrize(
    "model_key, hf_key",
    [
        ("model.language_model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("model.language_model.norm.weight", "model.norm.weight"),
        ("model.audio_tower.conv1.weight", "audio_tower.conv1.weight"),
        ("model.audio_tower.layers.1.fc1.bias", "audio_tower.layers.1.fc1.bias"),
        ("model.visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight"),
        ("model.visual.merger.mlp.0.weight", "visual.merger.mlp.0.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ],
)
def test_thinker_key_mapping_both_ways(model_key, hf_key):
    assert model_to_hf_key(model_key, thinker=True) == hf_key
    assert hf_to_model_key(hf_key, thinker=True) == model_key
    assert hf_to_model_key(model_key, thinker=True) == model_key  # already in the model's layout


@pytest.mark.parametrize("key", ["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight", "lm_head.weight"])
def test_qwen2_keys_are_unchanged(key):
    assert model_to_hf_key(key, thinker=False) == key
    assert hf_to_model_key(key, thinker=False) == key


def test_save_and_reload_thinker_with_from_pretrained_identical_logits(tmp_path):
    model = tiny_thinker(seed=1)
    out = save_hf_checkpoint(model, tmp_path / "ckpt", dtype=torch.float32, tokenizer=tiny_tokenizer())
    assert out == tmp_path / "ckpt"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni_thinker"
    assert config["architectures"] == ["Qwen2_5OmniThinkerForConditionalGeneration"]
    keys = set(checkpoint_weight_files(out))
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "audio_tower.conv1.weight" in keys
    batch = multimodal_batch(model)
    assert torch.equal(_logits(_hf_thinker(out), batch), _logits(model, batch))


def test_save_and_reload_tied_qwen2_omits_lm_head(tmp_path):
    model = tiny_qwen2(seed=1)
    save_hf_checkpoint(model, tmp_path / "ckpt", dtype=torch.float32)
    assert "lm_head.weight" not in checkpoint_weight_files(tmp_path / "ckpt")
    reloaded = _hf_qwen2(tmp_path / "ckpt")
    batch = text_batch()
    assert torch.equal(_logits(reloaded, batch), _logits(model, batch))
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def test_save_sharded_files_with_index(tmp_path):
    model = tiny_thinker(seed=2)
    save_hf_checkpoint(model, tmp_path / "ckpt", dtype=torch.float32, max_shard_size_gb=100e3 / 1024**3)
    index = json.loads((tmp_path / "ckpt" / SAFE_WEIGHTS_INDEX_NAME).read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1
    assert all((tmp_path / "ckpt" / name).is_file() for name in files)
    assert not (tmp_path / "ckpt" / SAFE_WEIGHTS_NAME).exists()
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.state_dict().values())
    batch = multimodal_batch(model)
    assert torch.equal(_logits(_hf_thinker(tmp_path / "ckpt"), batch), _logits(model, batch))


def test_save_casts_to_the_requested_dtype(tmp_path):
    save_hf_checkpoint(tiny_qwen2(), tmp_path / "ckpt")  # default bf16
    state_dict = read_hf_state_dict(tmp_path / "ckpt", tiny_qwen2(dtype=torch.bfloat16, device="meta"))
    assert {t.dtype for t in state_dict.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["dtype"] == "bfloat16"


def test_save_copies_tokenizer_files_from_the_source_dir(tmp_path):
    src = save_hf_checkpoint(tiny_qwen2(), tmp_path / "src", tokenizer=tiny_tokenizer())
    save_hf_checkpoint(tiny_qwen2(seed=5), tmp_path / "dst", copy_files_from=src)
    assert (tmp_path / "dst" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (tmp_path / "dst" / "chat_template.jinja").is_file()


def test_save_replaces_an_existing_dir_atomically(tmp_path):
    target = tmp_path / "ckpt"
    save_hf_checkpoint(tiny_qwen2(seed=1), target, dtype=torch.float32)
    (target / "stale.txt").write_text("from the previous save")
    save_hf_checkpoint(tiny_qwen2(seed=2), target, dtype=torch.float32)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old dirs left
    batch = text_batch()
    assert torch.equal(_logits(_hf_qwen2(target), batch), _logits(tiny_qwen2(seed=2), batch))


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    target = tmp_path / "ckpt"
    save_hf_checkpoint(tiny_qwen2(seed=1), target, dtype=torch.float32)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(tiny_qwen2(seed=2), target, dtype=torch.float32, tokenizer=BrokenTokenizer())
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_read_wrong_checkpoint_names_the_mismatch(tmp_path):
    save_hf_checkpoint(tiny_qwen2(), tmp_path / "qwen2")
    with pytest.raises(ValueError, match="config.json: model_type 'qwen2', but the configured model is a Qwen2_5Omni"):
        read_hf_state_dict(tmp_path / "qwen2", tiny_thinker(device="meta"))
    with pytest.raises(ValueError, match="does not match Qwen2ForCausalLM: .* missing"):
        read_hf_state_dict(tmp_path / "qwen2", tiny_qwen2(device="meta", num_hidden_layers=3))
    with pytest.raises(ValueError, match="unexpected"):
        read_hf_state_dict(tmp_path / "qwen2", tiny_qwen2(device="meta", num_hidden_layers=1))


def test_read_without_weights_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors.index.json or model.safetensors"):
        checkpoint_weight_files(tmp_path)


def test_load_full_state_dict_single_process_into_meta_model():
    reference = tiny_thinker(seed=4)
    model = tiny_thinker(device="meta")
    state_dict = reference.state_dict()
    load_full_state_dict(model, state_dict, device="cpu")
    batch = multimodal_batch(model)
    assert torch.equal(_logits(model, batch), _logits(reference, batch))


def test_load_into_meta_model_keeps_tied_embeddings(tmp_path):
    save_hf_checkpoint(tiny_qwen2(seed=4), tmp_path / "ckpt", dtype=torch.float32)
    model = tiny_qwen2(device="meta")
    load_hf_checkpoint(model, tmp_path / "ckpt", device="cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, tiny_qwen2(seed=4).lm_head.weight)


@pytest.mark.parametrize(
    "state_dict, device, message",
    [(None, "cpu", "full_state_dict is required"), ({}, None, "pass the device")],
)
def test_load_full_state_dict_bad_arguments(state_dict, device, message):
    with pytest.raises(ValueError, match=message):
        load_full_state_dict(tiny_qwen2(device="meta"), state_dict, device=device)


# ---- full Qwen2.5-Omni write-back ------------------------------------------------------------


@pytest.fixture
def omni_dir(tmp_path):
    return make_fake_omni_checkpoint(tiny_thinker(seed=8), tmp_path / "omni", tiny_tokenizer())


def test_full_omni_write_back_replaces_only_the_thinker(omni_dir, tmp_path):
    from safetensors import safe_open

    model = qwen2_5_omni_thinker(omni_dir, dtype=torch.float32)
    batch = multimodal_batch(model)
    _train_step(model, batch)
    out = save_hf_checkpoint(model, tmp_path / "omni_trained", dtype=torch.float32, omni_checkpoint_dir=omni_dir)

    original_files, new_files = checkpoint_weight_files(omni_dir), checkpoint_weight_files(out)
    assert set(new_files) == set(original_files)
    assert (out / "config.json").read_bytes() == (omni_dir / "config.json").read_bytes()
    assert (out / "spk_dict.pt").read_bytes() == (omni_dir / "spk_dict.pt").read_bytes()
    assert (out / "tokenizer.json").is_file()
    for key in FAKE_TALKER_SHAPES:
        with safe_open(str(original_files[key]), "pt") as f_old, safe_open(str(new_files[key]), "pt") as f_new:
            old, new = f_old.get_tensor(key), f_new.get_tensor(key)
        assert new.dtype == torch.bfloat16 and torch.equal(new, old), key
    assert torch.equal(_logits(qwen2_5_omni_thinker(out, dtype=torch.float32), batch), _logits(model, batch))
    assert not torch.equal(_logits(qwen2_5_omni_thinker(omni_dir, dtype=torch.float32), batch), _logits(model, batch))


def test_full_omni_write_back_rejects_a_different_thinker(omni_dir, tmp_path):
    with pytest.raises(ValueError, match="does not match the Thinker"):
        save_hf_checkpoint(tiny_thinker(num_hidden_layers=1), tmp_path / "out", omni_checkpoint_dir=omni_dir)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "model_fn, use_omni_dir, message",
    [
        (tiny_qwen2, True, "needs a Qwen2.5-Omni Thinker"),
        (tiny_thinker, False, "is not a full Qwen2.5-Omni checkpoint"),
    ],
)
def test_full_omni_write_back_bad_arguments(omni_dir, tmp_path, model_fn, use_omni_dir, message):
    target = omni_dir if use_omni_dir else save_hf_checkpoint(tiny_thinker(), tmp_path / "thinker_only")
    with pytest.raises(ValueError, match=message):
        save_hf_checkpoint(model_fn(), tmp_path / "out", omni_checkpoint_dir=target)


# ---- 2 ranks: load from rank 0 into a meta + sharded model, save from the sharded model --------


def _two_rank_scenario(out: dict, thinker_dir: str, qwen2_dir: str, save_root: str) -> None:
    import torch.distributed as dist

    from merr1.components.parallel import shard_model

    rank0 = dist.get_rank() == 0
    batch = multimodal_batch(tiny_thinker(device="meta"))

    # Tiny-model recipe pattern: rank 0 builds the real model, every rank a meta one; shard; broadcast.
    full_state_dict = tiny_thinker(seed=3).state_dict() if rank0 else None
    model = shard_model(tiny_thinker(device="meta"), param_dtype=None)
    load_full_state_dict(model, full_state_dict, device="cpu")
    out["seeded_logits"] = _logits(model, batch)
    out["caller_dict_untouched"] = full_state_dict is None or all(
        type(t) is torch.Tensor for t in full_state_dict.values()
    )
    # Replicated, unsharded model (eval_mer's data parallelism): rank 0's weights reach every rank.
    replicated = tiny_thinker(device="meta")
    load_full_state_dict(replicated, full_state_dict, device="cpu")
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, _logits(replicated, batch))
    out["replicated_logits_per_rank"] = per_rank

    for name, builder, checkpoint_dir, kwargs in (
        ("thinker", qwen2_5_omni_thinker, thinker_dir, batch),
        ("qwen2", qwen2_causal_lm, qwen2_dir, text_batch()),
    ):
        # Checkpoint recipe pattern: meta skeleton everywhere, shard, rank 0 reads + broadcasts.
        model = shard_model(builder(checkpoint_dir, dtype=torch.float32, device="meta"), param_dtype=None)
        load_hf_checkpoint(model, checkpoint_dir, device="cpu")
        out[f"{name}_loaded_logits"] = _logits(model, kwargs)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model(**kwargs).loss.backward()
        optimizer.step()
        out[f"{name}_trained_logits"] = _logits(model, kwargs)
        saved = save_hf_checkpoint(
            model,
            f"{save_root}/{name}",
            dtype=torch.float32,
            max_shard_size_gb=100e3 / 1024**3,
            copy_files_from=checkpoint_dir,
        )
        out[f"{name}_returned_path"] = saved
    out["qwen2_tied_after_step"] = model.lm_head.weight is model.model.embed_tokens.weight

    # The full recipe order: float8 (+ float8 all-gather), AC, compile, shard, load from rank 0.
    from merr1.components.parallel import apply_activation_checkpointing, apply_float8, compile_decoder_layers

    full_state_dict = tiny_thinker(seed=3).state_dict() if rank0 else None
    model = tiny_thinker(device="meta")
    apply_float8(model, recipe="tensorwise", enable_fsdp_float8_all_gather=True, emulate=True)
    apply_activation_checkpointing(model)
    compile_decoder_layers(model, backend="aot_eager")
    shard_model(model, param_dtype=None)
    load_full_state_dict(model, full_state_dict, device="cpu")
    out["recipe_order_loss"] = model(**batch).loss.detach()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt2")
    save_hf_checkpoint(tiny_thinker(seed=5), root / "thinker", dtype=torch.float32, tokenizer=tiny_tokenizer())
    save_hf_checkpoint(tiny_qwen2(seed=5), root / "qwen2", dtype=torch.float32)
    dirs = [str(root / name) for name in ("thinker", "qwen2", "saved")]
    results = run_two_ranks(_two_rank_scenario, root / "work", *dirs)
    return results, root


def test_two_ranks_load_from_rank0_equals_unsharded(two_ranks):
    results, _ = two_ranks
    batch = multimodal_batch(tiny_thinker(device="meta"))
    expected = _logits(tiny_thinker(seed=3), batch)
    assert torch.equal(results["seeded_logits"], expected)
    assert len(results["replicated_logits_per_rank"]) == 2
    assert all(torch.equal(logits, expected) for logits in results["replicated_logits_per_rank"])
    assert results["caller_dict_untouched"]


@pytest.mark.parametrize(
    "name, builder, batch_fn", [("thinker", tiny_thinker, multimodal_batch), ("qwen2", tiny_qwen2, None)]
)
def test_two_ranks_load_hf_checkpoint_equals_unsharded(two_ranks, name, builder, batch_fn):
    results, _ = two_ranks
    batch = batch_fn(tiny_thinker(device="meta")) if batch_fn else text_batch()
    assert torch.equal(results[f"{name}_loaded_logits"], _logits(builder(seed=5), batch))


@pytest.mark.parametrize(
    "name, load, batch_fn", [("thinker", _hf_thinker, multimodal_batch), ("qwen2", _hf_qwen2, None)]
)
def test_two_ranks_save_reloads_with_from_pretrained(two_ranks, name, load, batch_fn):
    results, root = two_ranks
    saved = root / "saved" / name
    assert results[f"{name}_returned_path"] == saved  # rank 0 wrote it
    assert (saved / SAFE_WEIGHTS_INDEX_NAME).is_file()
    batch = batch_fn(tiny_thinker(device="meta")) if batch_fn else text_batch()
    reloaded = _logits(load(saved), batch)
    torch.testing.assert_close(reloaded, results[f"{name}_trained_logits"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(results[f"{name}_trained_logits"], results[f"{name}_loaded_logits"])


def test_two_ranks_tied_embeddings_survive_sharded_training(two_ranks):
    results, _ = two_ranks
    assert results["qwen2_tied_after_step"]


def test_two_ranks_full_recipe_order_loads_into_float8_compiled_sharded_model(two_ranks):
    from merr1.components.parallel import apply_float8

    results, _ = two_ranks
    reference = tiny_thinker(seed=3)
    apply_float8(reference, recipe="tensorwise", emulate=True)
    batch = multimodal_batch(reference)
    with torch.no_grad():
        expected = reference(**batch).loss
    torch.testing.assert_close(results["recipe_order_loss"], expected, atol=1e-5, rtol=0)


def test_read_ignores_stored_non_persistent_buffers(tmp_path):
    from safetensors.torch import load_file, save_file

    save_hf_checkpoint(tiny_qwen2(seed=6), tmp_path / "ckpt", dtype=torch.float32)
    path = tmp_path / "ckpt" / SAFE_WEIGHTS_NAME
    tensors = load_file(str(path))
    tensors["model.rotary_emb.inv_freq"] = torch.ones(16)  # as some old checkpoints store it
    save_file(tensors, str(path), metadata={"format": "pt"})
    model = qwen2_causal_lm(tmp_path / "ckpt", dtype=torch.float32)
    assert torch.equal(model.model.rotary_emb.inv_freq, tiny_qwen2().model.rotary_emb.inv_freq)


# ---- refused inputs (issue 15, item 4) -------------------------------------------------------


def _rewrite_tensor(ckpt_dir, key, change):
    """Replace one tensor of a single-file checkpoint by ``change(tensor)``."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ckpt_dir / SAFE_WEIGHTS_NAME))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(ckpt_dir / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})


KEY = "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: (t * 100).to(torch.int8), rf"model.safetensors: tensor '{KEY}' has dtype torch.int8, .* quantized"),
        (lambda t: t.index_fill(0, torch.tensor([1]), float("nan")), rf"tensor '{KEY}' holds \d+ NaN or infinite value"),
        (lambda t: t.index_fill(1, torch.tensor([0]), float("inf")), rf"tensor '{KEY}' holds \d+ NaN or infinite"),
        (lambda t: t.index_fill(0, torch.tensor([0]), -float("inf")), rf"tensor '{KEY}' holds \d+ NaN or infinite"),
    ],
    ids=["int8", "nan", "inf", "-inf"],
)
def test_quantized_or_nonfinite_weights_are_refused_naming_key_and_file(tmp_path, change, message):
    save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "ckpt", dtype=torch.float32)
    _rewrite_tensor(tmp_path / "ckpt", KEY, change)
    with pytest.raises(ValueError, match=message):
        read_hf_state_dict(tmp_path / "ckpt", tiny_qwen2(device="meta"))
    with pytest.raises(ValueError, match=message):
        load_hf_checkpoint(tiny_qwen2(device="meta"), tmp_path / "ckpt", device="cpu")


def test_huge_finite_weights_are_not_mistaken_for_nonfinite(tmp_path):
    """Their float32 sum overflows to inf; the element-wise confirmation finds every value finite."""
    save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "ckpt", dtype=torch.float32)
    _rewrite_tensor(tmp_path / "ckpt", KEY, lambda t: torch.full_like(t, 3e38))
    assert bool((read_hf_state_dict(tmp_path / "ckpt", tiny_qwen2(device="meta"))[KEY] == 3e38).all())


@pytest.mark.parametrize(
    "config_change, message",
    [
        ({"model_type": "llama"}, r"config.json: model_type 'llama', but the configured model is a Qwen2ForCausalLM"),
        ({"architectures": ["Qwen2ForSequenceClassification"]}, r"architectures \['Qwen2ForSequenceClassification'\]"),
    ],
)
def test_config_of_another_architecture_is_refused(tmp_path, config_change, message):
    save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "ckpt", dtype=torch.float32)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, **config_change}))
    with pytest.raises(ValueError, match=message):
        load_hf_checkpoint(tiny_qwen2(device="meta"), tmp_path / "ckpt", device="cpu")


def test_thinker_checkpoint_into_a_qwen2_model_and_back_is_refused(tmp_path):
    save_hf_checkpoint(tiny_thinker(seed=1), tmp_path / "thinker", dtype=torch.float32)
    save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "qwen2", dtype=torch.float32)
    with pytest.raises(ValueError, match="model_type 'qwen2_5_omni_thinker', but the configured model is a Qwen2ForCausalLM"):
        read_hf_state_dict(tmp_path / "thinker", tiny_qwen2(device="meta"))
    with pytest.raises(ValueError, match=r"model_type 'qwen2', .* Qwen2_5OmniThinkerForConditionalGeneration \(accepts"):
        read_hf_state_dict(tmp_path / "qwen2", tiny_thinker(device="meta"))


@pytest.mark.parametrize(
    "entry, allowed",
    [
        ("model-00001-of-00002.safetensors", True),
        ("shards/model-00001-of-00002.safetensors", True),  # a subfolder of the checkpoint
        ("../../outside/model.safetensors", False),
        ("shards/../../model.safetensors", False),
        ("/etc/model.safetensors", False),
        ("..\\outside\\model.safetensors", False),
        ("C:\\model.safetensors", False),
        ("", False),
        (7, False),
    ],
)
def test_index_entries_must_stay_inside_the_checkpoint_folder(tmp_path, entry, allowed):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": entry}}
    (tmp_path / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    if allowed:
        assert checkpoint_weight_files(tmp_path) == {"model.embed_tokens.weight": tmp_path / entry}
    else:
        with pytest.raises(ValueError, match=r"model.safetensors.index.json: the weight_map entry of 'model.embed_tokens.weight'"):
            checkpoint_weight_files(tmp_path)


def test_index_pointing_outside_is_not_followed(tmp_path):
    """The issue's case: a checkpoint whose index names ../../outside/...; nothing there is read."""
    save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "outside", dtype=torch.float32)
    ckpt = tmp_path / "runs" / "ckpt"
    ckpt.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        if (tmp_path / "outside" / name).exists():
            (ckpt / name).write_bytes((tmp_path / "outside" / name).read_bytes())
    keys = list(tiny_qwen2(device="meta").state_dict())
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, "../../outside/model.safetensors")}
    (ckpt / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="points outside the checkpoint folder"):
        load_hf_checkpoint(tiny_qwen2(device="meta"), ckpt, device="cpu")


def test_malformed_index_names_the_file(tmp_path):
    (tmp_path / SAFE_WEIGHTS_INDEX_NAME).write_text('{"weight_map": ["a"]}')
    with pytest.raises(ValueError, match="model.safetensors.index.json is not a safetensors index"):
        checkpoint_weight_files(tmp_path)


# ---- the REAL Qwen2.5-Omni-7B layout (tests/fixtures/qwen2_5_omni) ---------------------------------

REAL = {
    "<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646, "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648, "<|vision_bos|>": 151652, "<|vision_eos|>": 151653, "<|VIDEO|>": 151656, "user": 872,
}  # fmt: skip


def _real_id_batch() -> dict[str, torch.Tensor]:
    """A 1-row Thinker batch with the REAL token ids: 40 mel frames (10 audio tokens, 128 bins), a
    (2, 2, 2) video (2 tokens), a few text tokens; labels on the text."""
    g = torch.Generator().manual_seed(0)
    text = torch.randint(100, 5000, (6,), generator=g).tolist()
    ids = (
        [REAL["<|im_start|>"], REAL["user"], REAL["<|audio_bos|>"]] + [REAL["<|AUDIO|>"]] * 10
        + [REAL["<|audio_eos|>"], REAL["<|vision_bos|>"]] + [REAL["<|VIDEO|>"]] * 2 + [REAL["<|vision_eos|>"]]
        + text + [REAL["<|im_end|>"]]
    )  # fmt: skip
    input_ids = torch.tensor([ids])
    labels = torch.full_like(input_ids, -100)
    labels[0, -len(text) - 1 :] = input_ids[0, -len(text) - 1 :]
    return dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
        input_features=torch.randn(1, 128, 40, generator=g), feature_attention_mask=torch.ones(1, 40, dtype=torch.long),
        pixel_values_videos=torch.randn(8, 3 * 2 * 14 * 14, generator=g), video_grid_thw=torch.tensor([[2, 2, 2]]),
        video_second_per_grid=torch.tensor([1.0]), use_cache=False,
    )  # fmt: skip


def _hf_names_and_shapes(model) -> dict[str, list[int]]:
    return {THINKER_PREFIX + model_to_hf_key(k, True): list(v.shape) for k, v in model.state_dict().items()}


def test_meta_built_7b_thinker_has_exactly_the_real_keys_and_shapes():
    from model_fixtures import REAL_OMNI_DIR, real_state_dict_shapes

    real = real_state_dict_shapes()["thinker_ckpt"]
    assert len(real) == 1346
    from_config = qwen2_5_omni_thinker(REAL_OMNI_DIR, device="meta")  # the real config.json, no weights read
    assert _hf_names_and_shapes(from_config) == real
    assert _hf_names_and_shapes(qwen2_5_omni_thinker_random("7B", device="meta")) == real
    assert sum(p.numel() for p in from_config.parameters()) == 8_931_813_888


@pytest.fixture(scope="module")
def real_layout_omni(tmp_path_factory):
    from model_fixtures import make_real_layout_omni_checkpoint

    return make_real_layout_omni_checkpoint(tmp_path_factory.mktemp("real_omni") / "Qwen2.5-Omni-7B-shrunk")


def test_real_layout_full_omni_loads_trains_and_exports_both_ways(real_layout_omni, tmp_path):
    """Real names (shrunken shapes): load the Thinker, one training step, export Thinker-only and
    full Omni; both reload with transformers' own classes with 0 missing and 0 unexpected keys."""
    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

    from model_fixtures import real_state_dict_shapes

    model = qwen2_5_omni_thinker(real_layout_omni, dtype=torch.float32)
    assert set(_hf_names_and_shapes(model)) == set(real_state_dict_shapes()["thinker_ckpt"])
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight  # the file has lm_head
    batch = _real_id_batch()
    before = _logits(model, batch)
    _train_step(model, batch, lr=0.1)
    trained = _logits(model, batch)
    assert not torch.allclose(before, trained)

    thinker_dir = save_hf_checkpoint(model, tmp_path / "thinker", dtype=torch.float32, copy_files_from=real_layout_omni)
    reloaded, info = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        str(thinker_dir), dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(_logits(reloaded.eval(), batch), trained)
    generation = json.loads((thinker_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]
    assert (thinker_dir / "preprocessor_config.json").is_file()

    omni_dir = save_hf_checkpoint(model, tmp_path / "omni", omni_checkpoint_dir=real_layout_omni)
    assert set(checkpoint_weight_files(omni_dir)) == set(checkpoint_weight_files(real_layout_omni))
    # transformers' Qwen2_5OmniForConditionalGeneration.from_pretrained cannot return the loading info
    # (it calls load_speakers on the returned tuple): the info comes from its base loader, the
    # weights from the class's own from_pretrained (which also loads spk_dict.pt).
    from transformers.modeling_utils import PreTrainedModel

    _, info = PreTrainedModel.from_pretrained.__func__(
        Qwen2_5OmniForConditionalGeneration, str(omni_dir), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    full = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(omni_dir))
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    got = full.thinker.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("builder, make", [(qwen2_5_omni_thinker, tiny_thinker), (qwen2_causal_lm, tiny_qwen2)])
@pytest.mark.parametrize("stored_head, config_says_tied", [(False, False), (True, True)])
def test_lm_head_tying_comes_from_the_checkpoint(tmp_path, builder, make, stored_head, config_says_tied):
    """Tied exactly when the checkpoint has no lm_head.weight, even against its config.json."""
    from safetensors.torch import load_file, save_file

    source = make(seed=3, tie_word_embeddings=False) if make is tiny_qwen2 else make(seed=3)
    path = save_hf_checkpoint(source, tmp_path / "ckpt", dtype=torch.float32)
    tensors = load_file(str(path / SAFE_WEIGHTS_NAME))
    embed_key = "model.embed_tokens.weight"
    if not stored_head:
        del tensors["lm_head.weight"]
    save_file(tensors, str(path / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["tie_word_embeddings"] = config_says_tied
    (path / "config.json").write_text(json.dumps(config))

    model = builder(path, dtype=torch.float32)
    head, embed = model.lm_head.weight, model.get_input_embeddings().weight
    if stored_head:  # the config's "tied" is overruled: the stored head is used as is
        assert head is not embed and torch.equal(head, tensors["lm_head.weight"])
        assert not model.config.tie_word_embeddings
    else:
        assert head is embed and torch.equal(head, tensors[embed_key]) and model.config.tie_word_embeddings
    # The export says what it is: transformers reloads it with nothing missing or unexpected.
    out = save_hf_checkpoint(model, tmp_path / "out", dtype=torch.float32)
    assert ("lm_head.weight" in checkpoint_weight_files(out)) == stored_head
    cls = type(model)
    _, info = cls.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_hf_export_refuses_a_full_disk_naming_the_folder_and_the_bytes(tmp_path, monkeypatch):
    import errno
    import os
    from types import SimpleNamespace

    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=4096))
    with pytest.raises(OSError, match=r"not enough free space to write the HF weights .*hf: they need about \d+ bytes") as err:
        save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "hf", dtype=torch.float32)
    assert err.value.errno == errno.ENOSPC and not (tmp_path / "hf").exists()
    monkeypatch.setattr(os, "statvfs", real)

    def no_space(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("merr1.components.hf_checkpoint.write_safetensors", no_space)
    with pytest.raises(OSError, match="disk full while writing the HF weights into .*hf.*partial write was removed"):
        save_hf_checkpoint(tiny_qwen2(seed=1), tmp_path / "hf", dtype=torch.float32)
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind
