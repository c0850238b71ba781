"""Model builders: Qwen2.5-Omni Thinker and Qwen2 causal LMs, real (from a checkpoint) and tiny.

Tiny models are randomly initialised from a seed, built in code, and use the tiny tokenizer's
special-token ids (``merr1.components.tokenizer.TINY_SPECIAL_TOKENS``).
"""

from __future__ import annotations

import torch
from torch import nn

from merr1.components.tokenizer import TINY_SPECIAL_TOKENS

TINY_VOCAB_SIZE = 512


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
    half = head_dim // 2
    # Qwen2.5-Omni splits the rotary half-dim into (temporal, height, width) sections.
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    mrope_section = [t_sec, h_sec, half - t_sec - h_sec]
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
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section},
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


def tiny_thinker(seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs) -> nn.Module:
    """A randomly initialised tiny Qwen2.5-Omni Thinker (``Qwen2_5OmniThinkerForConditionalGeneration``)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = tiny_thinker_config(**config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    return model.to(dtype)


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


def tiny_qwen2(seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs) -> nn.Module:
    """A randomly initialised tiny ``Qwen2ForCausalLM``."""
    from transformers import Qwen2ForCausalLM

    config = tiny_qwen2_config(**config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)
