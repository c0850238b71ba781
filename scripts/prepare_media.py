"""Decode MER-Caption+ (or MER-UniBench-format) media once into the cache that training reads.

Layout read: ``{data_dir}/audio/{name}.wav`` and ``{data_dir}/video/{name}.mp4`` (the MER2025
release's folders); written: ``{out}/{name}.safetensors`` (default ``{data_dir}/media_cache``),
holding exactly the Thinker's multimodal forward kwargs (see ``merr1.components.data.media``), and
``{out}/media_settings.json``, the settings they were made with. A cache folder made with other
settings is refused (the error says how to rebuild it), so one cache never mixes two settings.

Audio: ``--audio_source auto`` (default) reads ``audio/{name}.wav`` and falls back to the clip's
own audio track when ``audio/`` lacks the file; ``video`` always takes the clip's track (what the
model hears with ``use_audio_in_video``); ``wav`` reads the .wav files only.

Examples:
    # real Qwen2.5-Omni features (128 mel bins, the checkpoint's processor settings)
    python scripts/prepare_media.py --data_dir data/mer2025 --processor /ckpt/Qwen2.5-Omni-7B
    # 4 processes in parallel (each takes every 4th name; safe because existing entries are skipped)
    for i in 0 1 2 3; do python scripts/prepare_media.py --data_dir D --processor P --shard $i/4 & done; wait
    # the audio of every clip from its own mp4 (no audio/ folder needed)
    python scripts/prepare_media.py --data_dir D --processor P --audio_source video
    # tiny-Thinker features (16 mel bins, one 28x28 frame pair), audio only
    python scripts/prepare_media.py --data_dir D --tiny --modalities audio

Which samples: the names of ``--names_csv``; else, when ``{data_dir}`` holds MER-Caption+'s
``track2_train_mercaptionplus.csv``, its names (the MER2025 release's ``video/`` folder holds
132,171 clips, about four times the ~31k MER-Caption+ samples; ``--all_files`` decodes them all);
else every ``.wav``/video file found.

The MER-UniBench test sets have their own script, ``scripts/prepare_mer_unibench.py``.

Decoding video needs PyAV: ``pip install 'merr1[media]'``. Idempotent; unreadable or missing
files are logged by name and counted; exit status 1 with ``--strict`` if any sample failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from merr1.components.data import read_csv
from merr1.components.data.datasets import TRACK2_CSV
from merr1.components.data.media import VIDEO_EXTENSIONS, MediaConfig, find_media_files, prepare_media


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", type=Path, required=True, help="folder with audio/ and video/")
    parser.add_argument("--audio_dir", type=Path, default=None, help="default: DATA_DIR/audio")
    parser.add_argument("--video_dir", type=Path, default=None, help="default: DATA_DIR/video")
    parser.add_argument("--out", type=Path, default=None, help="cache folder (default: DATA_DIR/media_cache)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--processor", type=Path, help="checkpoint dir with preprocessor_config.json")
    group.add_argument("--tiny", action="store_true", help="features for the tiny test Thinker")
    parser.add_argument("--modalities", nargs="*", default=["audio", "video"], choices=["audio", "video"])
    parser.add_argument("--names_csv", type=Path, default=None, help="only the names of this CSV's name column")
    parser.add_argument("--all_files", action="store_true",
                        help=f"decode every file found, not only the names of DATA_DIR/{TRACK2_CSV}")
    parser.add_argument("--shard", default="0/1", help="i/n: process every n-th name starting at i")
    parser.add_argument(
        "--audio_source", default="auto", choices=["auto", "wav", "video"],
        help="auto: audio/{name}.wav, else the clip's own audio track; video: always the clip's; wav: .wav only",
    )  # fmt: skip
    parser.add_argument("--cache_dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any sample failed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = MediaConfig.tiny() if args.tiny else MediaConfig.from_pretrained(args.processor)
    config.cache_dtype = args.cache_dtype
    audio_dir = args.audio_dir or args.data_dir / "audio"
    video_dir = args.video_dir or args.data_dir / "video"
    names = None
    names_csv = args.names_csv
    if names_csv is None and not args.all_files and (args.data_dir / TRACK2_CSV).is_file():
        names_csv = args.data_dir / TRACK2_CSV
        logging.getLogger("prepare_media").info("decoding the names of %s (--all_files: every file)", names_csv)
    if names_csv is not None:
        names = [row["name"] for row in read_csv(names_csv, ("name",))]
    shard, num_shards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {args.shard}: need 0 <= i < n")
    if num_shards > 1:
        if names is None:
            found = set(find_media_files(video_dir, VIDEO_EXTENSIONS))
            if args.audio_source != "video":
                found |= set(find_media_files(audio_dir, (".wav",)))
            names = sorted(found)
        names = names[shard::num_shards]
    report = prepare_media(
        args.out or args.data_dir / "media_cache",
        audio_dir=audio_dir,
        video_dir=video_dir,
        config=config,
        names=names,
        modalities=tuple(args.modalities),
        audio_source=args.audio_source,
    )
    return 1 if args.strict and report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
