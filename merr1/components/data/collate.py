"""Collation: padding, attention masks, media kwargs and SFT packing.

Batches (the keys the recipes read):

- ``SFTCollator`` (right padding): ``input_ids`` [B, L], ``labels`` [B, L] (aligned with
  ``input_ids`` as HF's ``labels`` argument: the loss shifts them; -100 on prompt and padding),
  ``attention_mask`` [B, L] (1 = token), plus the media kwargs at the top level, so
  ``model(**{k: v for k, v in batch.items() if k != "labels"})`` is a valid Thinker call.
- ``SFTCollator(packed=True, max_packed_tokens=N)``: the batch's samples are packed
  first-fit-decreasing into rows of at most N tokens (a longer sample gets a row of its own);
  media follow the packed order; ``position_ids`` restart at 0 for every sample and there is NO
  ``attention_mask`` key. Packing pays when N is a few times the typical sample length (padding
  is then spent once per row instead of once per sample); the loss normalization over
  supervised tokens is unchanged. transformers 5.23 then builds a block-diagonal causal mask from the
  position resets (``masking_utils.find_packed_sequence_indices``; eager, sdpa and flex; flash
  attention uses the same resets for varlen), so samples in a row cannot attend to each other.
  Two conditions, both checked in the tests: the forward must run with ``use_cache=False`` (with
  a cache object the packed-mask detection is skipped and the row becomes one causal sequence),
  and for the Qwen2.5-Omni Thinker ``position_ids`` must be [4, R, L]: row 0 the per-sample text
  positions (used for the mask), rows 1-3 the multimodal RoPE positions of each sample
  (``mrope_position_ids``; ``mrope=True``). Text-only Qwen2 models take [R, L] (``mrope=False``).
  A packed row's tail padding forms its own block and has label -100.
- ``PromptCollator`` (left padding, for RL rollouts and evaluation): ``prompt_ids`` [B, P],
  ``prompt_mask`` [B, P] (int64, 1 = token), ``media`` (dict of Thinker kwargs, or None when the
  batch has no media), ``names``, and every other item key as a list in batch order (``labels``:
  GT words; evaluation items add ``label`` and ``response_prefix``).

Media kwargs of a batch: ``input_features`` [N_audio, n_mels, F_max] zero-padded with
``feature_attention_mask`` [N_audio, F_max]; ``pixel_values_videos`` rows concatenated in sample
order; ``video_grid_thw`` [N_video, 3] and ``video_second_per_grid`` [N_video] stacked; samples
without a modality simply contribute nothing to it. Floating tensors are cast to ``media_dtype``
when it is given. Samples whose prompt interleaves the clip's audio with its video carry
``use_audio_in_video`` (a 0-dim bool tensor, so ``.to(device)`` loops keep working); the batch then
carries it too, and the Thinker builds its TMRoPE positions. The flag holds for the whole batch
(``get_rope_index`` takes one), so a batch mixing the two layouts is refused.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from merr1.components.data.prompts import AUDIO_BOS, AUDIO_TOKEN, VIDEO_TOKEN, VISION_BOS, chunk_lengths

IGNORE_INDEX = -100  # label of unsupervised positions (HF / PyTorch cross-entropy convention)

# Qwen2.5-Omni Thinker defaults (config.position_id_per_seconds, config.seconds_per_chunk,
# vision_config.spatial_merge_size).
POSITION_ID_PER_SECONDS = 25
SECONDS_PER_CHUNK = 2
SPATIAL_MERGE_SIZE = 2
USE_AUDIO_IN_VIDEO = "use_audio_in_video"


def _dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}")
    return dtype


def collate_media(
    media: Sequence[dict[str, torch.Tensor]], dtype: str | torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Batch per-sample media kwargs (see the module docstring); {} if no sample has media."""
    dtype = _dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    flags = {bool(m[USE_AUDIO_IN_VIDEO]) if USE_AUDIO_IN_VIDEO in m else False for m in media if "pixel_values_videos" in m}
    if len(flags) > 1:
        raise ValueError(
            "a batch mixes samples with audio interleaved in the video (use_audio_in_video) and samples with "
            "separate audio and video blocks; the Thinker takes one use_audio_in_video per batch"
        )
    if True in flags:
        out[USE_AUDIO_IN_VIDEO] = torch.tensor(True)
    audio = [m for m in media if "input_features" in m]
    if audio:
        max_frames = max(m["input_features"].shape[-1] for m in audio)
        n_mels = audio[0]["input_features"].shape[1]
        features = torch.zeros(len(audio), n_mels, max_frames, dtype=audio[0]["input_features"].dtype)
        mask = torch.zeros(len(audio), max_frames, dtype=torch.long)
        for i, m in enumerate(audio):
            num_frames = int(m["feature_attention_mask"].sum())
            features[i, :, :num_frames] = m["input_features"][0, :, :num_frames]
            mask[i, :num_frames] = 1
        out["input_features"] = features  # [N_audio, n_mels, F_max]
        out["feature_attention_mask"] = mask  # [N_audio, F_max]
    video = [m for m in media if "pixel_values_videos" in m]
    if video:
        out["pixel_values_videos"] = torch.cat([m["pixel_values_videos"] for m in video])  # [sum t*h*w, D]
        out["video_grid_thw"] = torch.cat([m["video_grid_thw"].reshape(-1, 3) for m in video]).long()  # [N, 3]
        out["video_second_per_grid"] = torch.cat([m["video_second_per_grid"].reshape(-1) for m in video]).float()
    if dtype is not None:
        for key in ("input_features", "pixel_values_videos"):
            if key in out:
                out[key] = out[key].to(dtype)
    return out


def select_media(
    media: dict[str, torch.Tensor], num_prompts: int, prompts: Sequence[int] | torch.Tensor
) -> dict[str, torch.Tensor]:
    """The media kwargs of a selection of prompts from a collated batch (``collate_media``).

    Exactly what collating the selected samples' media would give (audio features trimmed to
    the longest selected clip). Each modality's items (audios, videos) must be listed prompt by
    prompt, the same number per prompt (one audio and one video per MER sample).

    Args:
        media: the Thinker's multimodal kwargs of ``num_prompts`` prompts.
        num_prompts: B.
        prompts: the prompt index of each output row, e.g. a micro-batch ``[2, 3]`` or every
            prompt repeated G times for rollout rows ``b * G + g`` (``repeat_media``).

    Returns:
        The kwargs for ``len(prompts)`` rows.
    """
    groups = {
        "audio": (("input_features", "feature_attention_mask", "audio_feature_lengths"), None),
        "video": (("video_grid_thw", "video_second_per_grid"), ("pixel_values_videos", "video_grid_thw")),
        "image": (("image_grid_thw",), ("pixel_values", "image_grid_thw")),
    }
    out = dict(media)
    for item_keys, patches in groups.values():
        present = [k for k in item_keys if k in media]
        if not present:
            continue
        num_items = len(media[present[0]])
        if num_items % num_prompts:
            raise ValueError(f"{present[0]} has {num_items} items, not a multiple of {num_prompts} prompts")
        per_prompt = num_items // num_prompts
        device = media[present[0]].device
        prompts = prompts if torch.is_tensor(prompts) else torch.tensor(list(prompts), dtype=torch.long)
        first = prompts.to(device).long() * per_prompt  # [R]
        order = (first[:, None] + torch.arange(per_prompt, device=device)).view(-1)  # items of the rows
        for key in present:
            out[key] = media[key].index_select(0, order)
        if patches is not None and patches[0] in media:
            values, grid = media[patches[0]], media[patches[1]]
            chunks = values.split(grid.prod(-1).tolist())
            out[patches[0]] = torch.cat([chunks[i] for i in order.tolist()])
    if "feature_attention_mask" in out and out["feature_attention_mask"].numel():
        num_frames = int(out["feature_attention_mask"].sum(-1).max())
        out["input_features"] = out["input_features"][..., :num_frames].contiguous()
        out["feature_attention_mask"] = out["feature_attention_mask"][:, :num_frames].contiguous()
    return out


def repeat_media(media: dict[str, torch.Tensor], num_prompts: int, num_samples: int) -> dict[str, torch.Tensor]:
    """Each prompt's media repeated G times, for teacher-forced passes over rollout rows ``b * G + g``."""
    return select_media(media, num_prompts, torch.arange(num_prompts).repeat_interleave(num_samples))


def pad_sequences(
    seqs: Sequence[torch.Tensor], pad_value: int, side: str = "right", length: int | None = None
) -> torch.Tensor:
    """Stack 1-D tensors into [B, L] padded on the given side (L = max length unless given)."""
    length = max(len(s) for s in seqs) if length is None else length
    out = torch.full((len(seqs), length), pad_value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = s
        elif side == "left":
            out[i, length - len(s) :] = s
        else:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return out


def mrope_position_ids(
    input_ids: torch.Tensor,
    video_grid_thw: torch.Tensor | None,
    video_second_per_grid: torch.Tensor | None,
    *,
    video_token_id: int,
    audio_token_id: int | None = None,
    vision_start_token_id: int | None = None,
    audio_start_token_id: int | None = None,
    use_audio_in_video: bool = False,
    spatial_merge_size: int = SPATIAL_MERGE_SIZE,
    position_id_per_seconds: float = POSITION_ID_PER_SECONDS,
    seconds_per_chunk: float = SECONDS_PER_CHUNK,
) -> torch.Tensor:
    """Qwen2.5-Omni multimodal RoPE positions of ONE unpadded sample, as
    ``Qwen2_5OmniThinkerModel.get_rope_index`` builds them (no images).

    - Text, audio blocks and media boundary tokens advance all three axes by one.
    - A video run takes (t * second_per_grid * position_id_per_seconds, row, column) offsets from
      its start (float32 product, truncated); the next token continues at the maximum + 1.
    - ``use_audio_in_video``: a block ``<|vision_bos|><|audio_bos|>`` (interleaved video and audio
      chunks) ``<|audio_eos|><|vision_eos|>``: both bos tokens share one position p; video and audio
      start at p + 1 on one time axis (an audio token is 1/25 s), their positions are handed out
      chunk by chunk (video chunk j, then audio chunk j, ``chunk_lengths``) in sequence order;
      both eos tokens take the maximum of the LAST chunk + 1 (a quirk kept from get_rope_index).

    Args:
        input_ids: [L] token ids.
        video_grid_thw: [N_video, 3] patch grids of this sample's videos, in order (or None).
        video_second_per_grid: [N_video] seconds per temporal patch (or None).
        video_token_id, audio_token_id, vision_start_token_id, audio_start_token_id: the Thinker's ids
            (the last three are needed with ``use_audio_in_video``).
        use_audio_in_video: whether the sample's videos carry their audio interleaved.
        spatial_merge_size, position_id_per_seconds, seconds_per_chunk: the Thinker config's.

    Returns:
        [3, L] int64 positions (temporal, height, width).
    """
    ids = input_ids.tolist()
    chunks: list[torch.Tensor] = []
    start, i, video_idx = 0, 0, 0

    def video_positions(offset: int) -> torch.Tensor:  # [3, t*h*w/merge^2]
        t, h, w = (int(x) for x in video_grid_thw[video_idx])
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        times = (torch.arange(t) * video_second_per_grid[video_idx].float() * position_id_per_seconds).long()
        return torch.stack([
            times.repeat_interleave(gh * gw), torch.arange(gh).repeat_interleave(gw).repeat(t), torch.arange(gw).repeat(t * gh)
        ]) + offset  # fmt: skip

    while i < len(ids):
        interleaved = use_audio_in_video and ids[i] == vision_start_token_id and ids[i + 1 : i + 2] == [audio_start_token_id]
        if interleaved:
            j = i + 2
            while j < len(ids) and ids[j] in (video_token_id, audio_token_id):
                j += 1
            video = video_positions(start + 1)
            num_video = sum(1 for k in range(i + 2, j) if ids[k] == video_token_id)
            num_audio = (j - i - 2) - num_video
            if num_video != video.shape[1] or num_audio < 1:
                raise ValueError(
                    f"audio-in-video block at token {i} has {num_video} video and {num_audio} audio tokens; "
                    f"video grid {video_grid_thw[video_idx].tolist()} needs {video.shape[1]} video tokens and audio"
                )
            audio = torch.arange(num_audio).expand(3, -1) + start + 1
            per_chunk = int(position_id_per_seconds * seconds_per_chunk)
            v_sizes = chunk_lengths([(int(x), 1) for x in (video[0] - start - 1).tolist()], per_chunk)
            a_sizes = chunk_lengths([(k, 1) for k in range(num_audio)], per_chunk)
            pieces, v_at, a_at = [], 0, 0
            for c in range(max(len(v_sizes), len(a_sizes))):
                if c < len(v_sizes):
                    pieces.append(video[:, v_at : v_at + v_sizes[c]])
                    v_at += v_sizes[c]
                if c < len(a_sizes):
                    pieces.append(audio[:, a_at : a_at + a_sizes[c]])
                    a_at += a_sizes[c]
            end = int(pieces[-1].max()) + 1
            chunks += [torch.full((3, 2), start, dtype=torch.long), *pieces, torch.full((3, 2), end, dtype=torch.long)]
            start, i, video_idx = end + 1, j + 2, video_idx + 1
        elif ids[i] == video_token_id:
            if use_audio_in_video:
                raise ValueError(
                    f"video token at {i} outside an audio-in-video block; with use_audio_in_video every video "
                    "must be <|vision_bos|><|audio_bos|>...<|audio_eos|><|vision_eos|>"
                )
            j = i
            while j < len(ids) and ids[j] == video_token_id:
                j += 1
            pos = video_positions(start)
            if j - i != pos.shape[1]:
                raise ValueError(f"video run of {j - i} tokens does not match grid {video_grid_thw[video_idx].tolist()}")
            chunks.append(pos)
            start, i, video_idx = int(pos.max()) + 1, j, video_idx + 1
        else:
            j = i
            while j < len(ids) and ids[j] != video_token_id and not (
                use_audio_in_video and ids[j] == vision_start_token_id and ids[j + 1 : j + 2] == [audio_start_token_id]
            ):
                j += 1
            chunks.append(torch.arange(start, start + j - i).expand(3, -1))
            start, i = start + j - i, j
    return torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)


class SFTCollator:
    """SFT batches, padded or packed (see the module docstring).

    Args:
        tokenizer: supplies the pad id (``pad_token_id``) and the ``<|VIDEO|>`` id.
        packed: concatenate samples into rows instead of padding each one.
        max_packed_tokens: row capacity when packed (required then).
        mrope: emit Thinker-style [4, R, L] position ids when packed (required for the Thinker).
        media_dtype: cast floating media tensors to this dtype (e.g. "bfloat16"); None keeps them.
        spatial_merge_size, position_id_per_seconds, seconds_per_chunk: the Thinker's values (for
            ``mrope``; samples whose media carry ``use_audio_in_video`` get the TMRoPE positions).
    """

    def __init__(
        self,
        tokenizer,
        *,
        packed: bool = False,
        max_packed_tokens: int | None = None,
        mrope: bool = False,
        media_dtype: str | torch.dtype | None = None,
        spatial_merge_size: int = SPATIAL_MERGE_SIZE,
        position_id_per_seconds: float = POSITION_ID_PER_SECONDS,
        seconds_per_chunk: float = SECONDS_PER_CHUNK,
    ):
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError("tokenizer has no pad_token_id")
        self.token_ids = {
            "video_token_id": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
            "audio_token_id": tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
            "vision_start_token_id": tokenizer.convert_tokens_to_ids(VISION_BOS),
            "audio_start_token_id": tokenizer.convert_tokens_to_ids(AUDIO_BOS),
        }
        self.seconds_per_chunk = seconds_per_chunk
        if packed and not max_packed_tokens:
            raise ValueError("packed=True needs max_packed_tokens (the row capacity)")
        self.packed = packed
        self.max_packed_tokens = max_packed_tokens
        self.mrope = mrope
        self.media_dtype = _dtype(media_dtype)
        self.spatial_merge_size = spatial_merge_size
        self.position_id_per_seconds = position_id_per_seconds

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        if self.packed:
            return self._pack(samples)
        media = collate_media([s["media"] for s in samples], self.media_dtype)
        input_ids = pad_sequences([s["input_ids"] for s in samples], self.pad_id, "right")  # [B, L]
        labels = pad_sequences([s["labels"] for s in samples], IGNORE_INDEX, "right")  # [B, L]
        attention_mask = pad_sequences([torch.ones_like(s["input_ids"]) for s in samples], 0, "right")  # [B, L]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, **media}

    def _positions(self, sample: dict[str, Any]) -> torch.Tensor:
        ids = sample["input_ids"]
        text = torch.arange(len(ids))
        if not self.mrope:
            return text
        m = sample["media"]
        grid = m.get("video_grid_thw")
        spg = m.get("video_second_per_grid")
        rope = mrope_position_ids(
            ids,
            grid,
            spg,
            **self.token_ids,
            use_audio_in_video=bool(m.get(USE_AUDIO_IN_VIDEO, False)),
            spatial_merge_size=self.spatial_merge_size,
            position_id_per_seconds=self.position_id_per_seconds,
            seconds_per_chunk=self.seconds_per_chunk,
        )
        return torch.cat([text[None], rope])  # [4, L]

    def _pack(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not self.mrope and any(s["media"] for s in samples):
            raise ValueError("packing samples with media needs mrope=True (Qwen2.5-Omni Thinker positions)")
        capacity = self.max_packed_tokens
        # First-fit decreasing; a sample longer than the capacity gets a row of its own.
        rows: list[list[dict[str, Any]]] = []
        used: list[int] = []
        for s in sorted(samples, key=lambda s: -len(s["input_ids"])):
            n = len(s["input_ids"])
            r = next((r for r in range(len(rows)) if used[r] + n <= capacity), None)
            if r is None:
                rows.append([])
                used.append(0)
                r = len(rows) - 1
            rows[r].append(s)
            used[r] += n
        length = max(used)
        num_pos_rows = 4 if self.mrope else 1
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros(num_pos_rows, len(rows), length, dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for s in row:
                n = len(s["input_ids"])
                input_ids[r, at : at + n] = s["input_ids"]
                labels[r, at : at + n] = s["labels"]
                position_ids[:, r, at : at + n] = self._positions(s).reshape(num_pos_rows, n)
                at += n
            # Tail padding: a fresh position run, i.e. its own block in the packed mask.
            position_ids[:, r, at:] = torch.arange(length - at)
        # The Thinker fills placeholders in row-major order: media must follow the packed order.
        media = collate_media([s["media"] for row in rows for s in row], self.media_dtype)
        return {
            "input_ids": input_ids,  # [R, L]
            "labels": labels,  # [R, L]
            "position_ids": position_ids if self.mrope else position_ids[0],  # [4, R, L] or [R, L]
            **media,
        }


def check_audio_in_video_layout(prompt_ids: torch.Tensor, media: dict[str, Any], token_ids: dict[str, int]) -> None:
    """A prompt whose media carry ``use_audio_in_video`` must hold each video as an interleaved
    block (``<|vision_bos|><|audio_bos|>``...), never a plain ``<|vision_bos|><|VIDEO|>`` one: the
    Thinker would give such video tokens text positions without any error.

    Raises:
        ValueError: naming the fix (build second-pass prompts with ``prompts.recheck_prompt_ids``,
            which copies the rollout prompt's media block verbatim).
    """
    if not bool(media.get(USE_AUDIO_IN_VIDEO, False)):
        return
    ids = prompt_ids.tolist()
    starts = [i for i, t in enumerate(ids) if t == token_ids["vision_start_token_id"]]
    plain = [i for i in starts if ids[i + 1 : i + 2] != [token_ids["audio_start_token_id"]]]
    num_videos = len(media["video_grid_thw"]) if "video_grid_thw" in media else 0
    if plain or len(starts) != num_videos:
        raise ValueError(
            f"a prompt with use_audio_in_video media has {len(starts) - len(plain)} interleaved audio-video "
            f"block(s) for {num_videos} video(s) and {len(plain)} plain video block(s); build it from the "
            "rollout prompt with merr1.components.data.prompts.recheck_prompt_ids (media block copied "
            "verbatim), or turn dataset.use_audio_in_video off"
        )


class PromptCollator:
    """Left-padded prompt batches for rollouts and evaluation (see the module docstring).

    A sample whose media carry ``use_audio_in_video`` must have the interleaved layout
    (``check_audio_in_video_layout``).

    Args:
        tokenizer: supplies ``pad_token_id`` and the media token ids.
        media_dtype: cast floating media tensors to this dtype; None keeps them.
    """

    def __init__(self, tokenizer, *, media_dtype: str | torch.dtype | None = None):
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError("tokenizer has no pad_token_id")
        self.media_dtype = _dtype(media_dtype)
        self.token_ids = {
            "vision_start_token_id": tokenizer.convert_tokens_to_ids(VISION_BOS),
            "audio_start_token_id": tokenizer.convert_tokens_to_ids(AUDIO_BOS),
        }

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        for s in samples:
            check_audio_in_video_layout(s["prompt_ids"], s["media"], self.token_ids)
        prompts = [s["prompt_ids"] for s in samples]
        batch: dict[str, Any] = {
            "prompt_ids": pad_sequences(prompts, self.pad_id, "left"),  # [B, P]
            "prompt_mask": pad_sequences([torch.ones_like(p) for p in prompts], 0, "left"),  # [B, P]
            "media": collate_media([s["media"] for s in samples], self.media_dtype) or None,
            "names": [s["name"] for s in samples],
        }
        for key in samples[0]:
            if key not in ("prompt_ids", "media", "name"):
                batch[key] = [s[key] for s in samples]
        return batch
