"""Decode the MME-Emotion videos once into merr1's caches: the media cache (the model under test's
audio + video inputs) and the judge frame cache (at most 10 frames at 1 fps, PNG).

Layout read: ``{data_dir}/<TASK>/question/<TASK_>.json`` (the released annotation files) and
``{video_dir}/<video_id>`` (the videos of the Hugging Face release); written:
``{media_dir}/<name>.safetensors`` and ``{frames_dir}/<name>/NN.png`` with ``<name>`` the
percent-encoded video id (defaults ``{data_dir}/media_cache`` and ``{data_dir}/frames_cache``).
See ``merr1.components.data.mme_emotion`` and ``merr1.components.data.frames``.

Examples:
    # real Qwen2.5-Omni inputs (the checkpoint's processor settings) and the judge frames
    python scripts/prepare_mme_emotion.py --data_dir /data/MME-Emotion --video_dir /data/MME-Emotion/videos \
        --processor /ckpt/Qwen2.5-Omni-7B
    # only the judge frames (an HTTP judge; answers from another model), 4 processes
    for i in 0 1 2 3; do
        python scripts/prepare_mme_emotion.py --data_dir D --video_dir V --no_media --shard $i/4 &
    done; wait

Needs PyAV (``pip install 'merr1[media]'``). Idempotent; missing or undecodable clips are logged
by video id and counted (the judge then drops them, as the official script does for a missing
video); exit status 1 with ``--strict`` if any clip failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout: import this checkout's merr1

from merr1.components.data.media import MediaConfig  # noqa: E402
from merr1.components.data.mme_emotion import FRAMES_DIR, MEDIA_DIR, prepare_caches, task_video_ids  # noqa: E402
from merr1.components.mme_emotion import TASKS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", type=Path, required=True, help="annotation folder (<TASK>/question/...)")
    parser.add_argument("--video_dir", type=Path, required=True, help="root of the video ids")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--media_dir", type=Path, default=None, help="default: DATA_DIR/media_cache")
    parser.add_argument("--frames_dir", type=Path, default=None, help="default: DATA_DIR/frames_cache")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--processor", type=Path, help="checkpoint dir with preprocessor_config.json")
    group.add_argument("--tiny", action="store_true", help="media for the tiny test Thinker")
    parser.add_argument("--no_media", action="store_true", help="only the judge frames")
    parser.add_argument("--no_frames", action="store_true", help="only the media cache")
    parser.add_argument("--modalities", nargs="*", default=["audio", "video"], choices=["audio", "video"])
    parser.add_argument("--max_side", type=int, default=None, help="downsize judge frames (default: native, official)")
    parser.add_argument("--cache_dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--shard", default="0/1", help="i/n: process every n-th clip starting at i")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any clip failed")
    args = parser.parse_args(argv)
    if not args.no_media and args.processor is None and not args.tiny:
        parser.error("the media cache needs --processor or --tiny (or pass --no_media)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = None
    if not args.no_media:
        config = MediaConfig.tiny() if args.tiny else MediaConfig.from_pretrained(args.processor)
        config.cache_dtype = args.cache_dtype
    shard, num_shards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {args.shard}: need 0 <= i < n")
    video_ids = task_video_ids(args.data_dir, args.tasks)[shard::num_shards]
    report = prepare_caches(
        video_ids,
        args.video_dir,
        media_dir=None if args.no_media else args.media_dir or args.data_dir / MEDIA_DIR,
        frames_dir=None if args.no_frames else args.frames_dir or args.data_dir / FRAMES_DIR,
        config=config,
        modalities=tuple(args.modalities),
        max_side=args.max_side,
    )
    return 1 if args.strict and report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
