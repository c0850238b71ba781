"""Generate the deterministic sample data set (MER-Caption+ format + three MER-UniBench-format
evaluation sets with tiny media) used by the debug configs, the tests and the CPU quick start.

    python scripts/make_sample_data.py                  # -> data/sample (seed 0)
    python scripts/make_sample_data.py --out /tmp/s --seed 1 --no_media

See ``merr1.components.data.sample`` for what it contains and why it is learnable. The debug
configs call ``merr1.components.data.mer_caption_plus_sample``, which runs the same generator
when ``data/sample`` is missing, so running this script by hand is optional.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from merr1.components.data.sample import (
    DEFAULT_NUM_EVAL,
    DEFAULT_NUM_SFT,
    DEFAULT_NUM_TRAIN,
    SAMPLE_INFO,
    make_sample_data,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num_sft_samples", type=int, default=DEFAULT_NUM_SFT)
    parser.add_argument("--num_eval", type=int, default=DEFAULT_NUM_EVAL)
    parser.add_argument("--no_media", action="store_true", help="text only (for text-only models)")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            parser.error(f"{args.out} exists; pass --force to replace it")
        if not (args.out / SAMPLE_INFO).is_file():
            parser.error(f"{args.out} holds no {SAMPLE_INFO}; refusing to delete a folder that is not a sample set")
        shutil.rmtree(args.out)
    info = make_sample_data(
        args.out,
        args.seed,
        num_train=args.num_train,
        num_sft_samples=args.num_sft_samples,
        num_eval=args.num_eval,
        with_media=not args.no_media,
    )
    print(json.dumps(info["stats"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
