"""Test fixtures shared by the model, parallel and checkpoint tests (plain functions, no pytest).

- ``multimodal_batch``: a deterministic 2-row training batch for the tiny Thinker with audio,
  image AND video inputs; row 1 is right-padded (attention 0, label -100); special and media
  placeholder tokens are never targets.
- ``text_batch``: a text-only batch.
- ``make_fake_omni_checkpoint``: a tiny stand-in for a full Qwen2.5-Omni checkpoint directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from merr1.components.tokenizer import TINY_SPECIAL_TOKENS as SPECIAL

PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal_patch_size * patch_size**2 of the tiny vision config
MERGE = 2 * 2  # spatial_merge_size**2 patches per LLM token


def multimodal_batch(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """Thinker forward kwargs (with ``labels``) for a batch of 2 rows.

    Row r has audio of ``(40, 24)[r]`` mel frames, an image of grid ``(1,4,4)``/``(1,2,4)`` and a
    video of grid ``(2,4,4)``/``(2,2,2)`` (t, h, w patches).
    """
    g = torch.Generator().manual_seed(seed)
    audio_frames = [40, 24]
    image_grids = torch.tensor([[1, 4, 4], [1, 2, 4]])
    video_grids = torch.tensor([[2, 4, 4], [2, 2, 2]])
    num_audio = model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(audio_frames))[1].tolist()
    rows = []
    for r in range(2):
        text = torch.randint(10, 500, (5 + 3 * r,), generator=g).tolist()
        rows.append(
            [SPECIAL["<|im_start|>"], *text[:2], SPECIAL["<|audio_bos|>"]]
            + [SPECIAL["<|AUDIO|>"]] * num_audio[r]
            + [SPECIAL["<|audio_eos|>"], SPECIAL["<|vision_bos|>"]]
            + [SPECIAL["<|IMAGE|>"]] * (int(image_grids[r].prod()) // MERGE)
            + [SPECIAL["<|vision_eos|>"], SPECIAL["<|vision_bos|>"]]
            + [SPECIAL["<|VIDEO|>"]] * (int(video_grids[r].prod()) // MERGE)
            + [SPECIAL["<|vision_eos|>"], *text[2:], SPECIAL["<|im_end|>"]]
        )
    length = max(len(row) for row in rows)
    input_ids = torch.full((2, length), SPECIAL["<|endoftext|>"], dtype=torch.long)  # [B, L]
    attention_mask = torch.zeros(2, length, dtype=torch.long)  # [B, L]
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels = labels.masked_fill(input_ids < 10, -100)  # special and media placeholder tokens
    feature_attention_mask = torch.zeros(2, max(audio_frames), dtype=torch.long)  # [B, F]
    for r, frames in enumerate(audio_frames):
        feature_attention_mask[r, :frames] = 1
    num_mel_bins = model.config.audio_config.num_mel_bins
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        input_features=torch.randn(2, num_mel_bins, max(audio_frames), generator=g) * feature_attention_mask[:, None],
        feature_attention_mask=feature_attention_mask,
        pixel_values=torch.randn(int(image_grids.prod(-1).sum()), PATCH_DIM, generator=g),
        image_grid_thw=image_grids,
        pixel_values_videos=torch.randn(int(video_grids.prod(-1).sum()), PATCH_DIM, generator=g),
        video_grid_thw=video_grids,
        video_second_per_grid=torch.tensor([1.0, 0.5]),
        use_cache=False,
    )


def text_batch(seed: int = 0, batch_size: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    """Text-only forward kwargs (with ``labels``) for the tiny Qwen2 / a text-only Thinker pass."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, 500, (batch_size, length), generator=g)  # [B, L]
    attention_mask = torch.ones_like(input_ids)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids.clone(), use_cache=False)


# Dummy non-Thinker tensors of the fake full checkpoint (the real ones are the Talker and token2wav).
FAKE_TALKER_SHAPES = {
    "talker.model.embed_tokens.weight": (8, 4),
    "talker.codec_head.weight": (8, 4),
    "token2wav.code2wav_dit_model.time_embed.weight": (3, 5),
}


def make_fake_omni_checkpoint(thinker, out_dir: str | Path, tokenizer=None) -> Path:
    """Write a tiny "full Qwen2.5-Omni" checkpoint: ``thinker.*`` = ``thinker``'s weights (flat
    HF layout), dummy ``talker.*``/``token2wav.*`` tensors, a ``qwen2_5_omni`` config.json, a
    speaker file, and the tokenizer. Weights are split over 2 safetensors files + an index, with
    Thinker and Talker tensors mixed in the first file, as in the real sharded checkpoints.
    """
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniConfig

    from merr1.components.hf_checkpoint import model_to_hf_key

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(123)
    thinker_sd = {"thinker." + model_to_hf_key(k, True): v.detach().clone() for k, v in thinker.state_dict().items()}
    talker_sd = {k: torch.randn(*shape, generator=g).to(torch.bfloat16) for k, shape in FAKE_TALKER_SHAPES.items()}
    keys = list(thinker_sd)
    first = {**dict(list(talker_sd.items())[:2]), **{k: thinker_sd[k] for k in keys[: len(keys) // 2]}}
    second = {**dict(list(talker_sd.items())[2:]), **{k: thinker_sd[k] for k in keys[len(keys) // 2 :]}}
    weight_map = {}
    for i, part in enumerate((first, second)):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: v.contiguous() for k, v in part.items()}, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    # The Talker's vocab holds the default token ids only when large (avoids config warnings).
    config = Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), talker_config={"vocab_size": 160000})
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    config.save_pretrained(str(out_dir))
    torch.save({"Chelsie": torch.zeros(2)}, out_dir / "spk_dict.pt")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


# ---- the REAL Qwen2.5-Omni-7B layout (tests/fixtures/qwen2_5_omni, see its PROVENANCE.md) ----------

REAL_OMNI_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "qwen2_5_omni"


def real_state_dict_shapes() -> dict[str, dict[str, list[int]]]:
    """Every tensor name -> shape of the real checkpoint: {"thinker_ckpt": ..., "others": ...}."""
    return json.loads((REAL_OMNI_DIR / "state_dict_keys.json").read_text())


def shrunken_real_omni_config() -> dict:
    """The real full-Omni config.json with every WIDTH shrunk (depths, vocabularies, token ids and
    therefore every tensor name kept): the Thinker LLM 32 wide with 4 heads (head dim 8, mRoPE
    sections [1, 1, 2]), vision/audio encoders 32 wide, Talker 32 wide, token2wav 32/64 wide."""
    config = json.loads((REAL_OMNI_DIR / "config.json").read_text())
    thinker = config["thinker_config"]
    thinker["text_config"].update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    thinker["text_config"]["rope_scaling"]["mrope_section"] = [1, 1, 2]
    thinker["vision_config"].update(hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32)
    thinker["audio_config"].update(d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64, output_dim=32)
    talker = config["talker_config"]
    talker.update(hidden_size=32, embedding_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)  # fmt: skip
    talker["rope_scaling"]["mrope_section"] = [1, 1, 2]
    dit = config["token2wav_config"]["dit_config"]
    for old in ("dim", "heads", "depth"):  # transformers 4.x names; transformers 5 reads the new ones
        dit.pop(old, None)
    dit.update(hidden_size=32, num_attention_heads=4, num_hidden_layers=22, head_dim=8, emb_dim=16, enc_dim=16, enc_emb_dim=16, enc_channels=[16, 16, 16, 16, 48],
               enc_lin_neurons=16, enc_attention_channels=8, enc_se_channels=8)  # fmt: skip
    config["token2wav_config"]["bigvgan_config"].update(upsample_initial_channel=64)
    return config


def make_real_layout_omni_checkpoint(out_dir: str | Path, tokenizer=None, seed: int = 0) -> Path:
    """A full Qwen2.5-Omni checkpoint directory with the REAL tensor names (shrunken shapes): the
    model transformers builds from ``shrunken_real_omni_config`` with random weights, saved under the
    on-disk names (``thinker.model.*`` -> ``thinker.*`` ...) in 3 safetensors files + an index, the
    config.json, the real preprocessor_config.json, a generation_config.json with the real eos ids
    ([151645, 151643]) and a speaker file."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from merr1.components.hf_checkpoint import model_to_hf_key

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = shrunken_real_omni_config()
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2))
    config = Qwen2_5OmniConfig.from_pretrained(str(out_dir))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5OmniForConditionalGeneration(config)
    state_dict = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("thinker."):
            key = "thinker." + model_to_hf_key(key[len("thinker."):], thinker=True)
        state_dict[key] = tensor.detach().to(torch.bfloat16).contiguous()
    names = sorted(state_dict)
    parts = [names[i::3] for i in range(3)]  # thinker and non-thinker tensors mixed in every file
    weight_map = {}
    for i, part in enumerate(parts):
        file = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: state_dict[k] for k in part}, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out_dir / "preprocessor_config.json").write_text((REAL_OMNI_DIR / "preprocessor_config.json").read_text())
    (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643], "transformers_version": "4.52.0"}))
    torch.save({"Chelsie": torch.zeros(2)}, out_dir / "spk_dict.pt")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir
