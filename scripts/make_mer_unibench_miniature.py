"""Write a miniature of MER-UniBench (the nine test sets) and MER-Caption+ in their released layouts.

A handful of samples per set, written exactly like the official files (label .npz dicts, CSV
columns, media folders and extensions, name quirks); see
``merr1.components.data.mer_unibench_miniature``. Used by the tests and by
``recipes/configs/debug/eval_mer_unibench_tiny.yaml``:

    python scripts/make_mer_unibench_miniature.py --out data/mer_unibench_mini
    python scripts/prepare_mer_unibench.py --root data/mer_unibench_mini --tiny --any_size

Writing the videos needs PyAV (``pip install 'merr1[media]'``); ``--no_video`` skips them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from merr1.components.data.mer_unibench_miniature import write_miniature


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per set)")
    parser.add_argument("--no_media", action="store_true", help="labels and subtitles only")
    parser.add_argument("--no_video", action="store_true", help="no video files (no PyAV needed)")
    args = parser.parse_args(argv)
    root = write_miniature(args.out, with_media=not args.no_media, with_video=not args.no_video)
    print(f"wrote the MER-UniBench miniature to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
