"""Data: MER-Caption+ and MER-UniBench data sets, prompts, collation, decoded media, sample data.

- ``datasets``: the ``Dataset`` classes and their YAML builders (``mer_caption_plus``,
  ``mer_caption_plus_sample``, ``mer_unibench``, ``mer_unibench_sample``);
- ``mer_unibench_release``: the nine official MER-UniBench test sets read as released
  (``mer_unibench_official``; label .npz files through a restricted unpickler);
- ``mer_unibench_miniature``: small generated copies of the official layouts (tests, debug config);
- ``prompts``: chat prompts, response formats (MER-R1, VideoAuto-R1, EMO-R3), the fast-thinking
  prefix and the EMO-R3 re-check prompts;
- ``collate``: ``SFTCollator``, ``PromptCollator``, media collation and selection;
- ``media``: the decoded-media cache (``scripts/prepare_media.py``) and the audio/video
  preprocessing of the Qwen2.5-Omni Thinker;
- ``sample``: the deterministic sample data of the quick start and the tests;
- ``mme_emotion``: the MME-Emotion layout, its model-under-test dataset and its sample set
  (``mme_emotion_dataset``, ``mme_emotion_sample``); ``frames``: the judge's frame cache.

The YAML targets are re-exported here, so a config names e.g.
``merr1.components.data.mer_caption_plus_sample``.
"""

from merr1.components.data.collate import IGNORE_INDEX, PromptCollator, SFTCollator, collate_media
from merr1.components.data.datasets import (
    BadRow,
    BadRowError,
    EvalRow,
    EvalSet,
    MERCaptionPlusDataset,
    MERUniBenchDataset,
    mer_caption_plus,
    mer_caption_plus_sample,
    mer_unibench,
    mer_unibench_sample,
    parse_openset,
    parse_openset_cell,
    read_csv,
    read_eval_folder,
    read_subtitles,
    split_sft_rl,
)
from merr1.components.data.mer_unibench_release import mer_unibench_official
from merr1.components.data.mme_emotion import MMEEmotionDataset, mme_emotion_dataset, mme_emotion_sample

__all__ = [
    "IGNORE_INDEX",
    "BadRow",
    "BadRowError",
    "EvalRow",
    "EvalSet",
    "MERCaptionPlusDataset",
    "MERUniBenchDataset",
    "MMEEmotionDataset",
    "PromptCollator",
    "SFTCollator",
    "collate_media",
    "mer_caption_plus",
    "mer_caption_plus_sample",
    "mer_unibench",
    "mer_unibench_official",
    "mer_unibench_sample",
    "mme_emotion_dataset",
    "mme_emotion_sample",
    "parse_openset",
    "parse_openset_cell",
    "read_csv",
    "read_eval_folder",
    "read_subtitles",
    "split_sft_rl",
]
