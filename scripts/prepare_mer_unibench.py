"""Check the nine MER-UniBench test sets as released and decode their media into merr1's cache.

Reads each set from its official root folder (``merr1.components.data.mer_unibench_release``; layouts in
docs/mer_unibench.md), then for every test sample:

1. checks the set: its test-set size against the official one (MER2023 411, MER2024 1,169,
   MELD 2,610, IEMOCAP 1,241, CMU-MOSI 686, CMU-MOSEI 4,659, SIMS 457, SIMSv2 1,034,
   OV-MERD+ 532), labels that cannot be used, names without a subtitle row, missing audio and
   video files; every problem is logged with the sample's name;
2. decodes the audio (``<audio dir>/<name>.wav``) and video (``<video dir>/<name>.mp4|.avi``) of
   each sample into ``<cache>/<name>.safetensors`` (the Thinker's inputs, see
   ``merr1.components.data.media``), skipping entries that exist (resumable), and names every
   file that cannot be read.

Exit status 0 when every selected set has its official size and every sample of this shard is
cached, 1 otherwise (a summary table lists the counts; problems of the clip the official MELD
preprocessing itself flags, ``test_dia279_utt15``, are named but not counted).

Examples:
    # all nine sets under one folder holding the official folders (mer2023-dataset-process, ...)
    python scripts/prepare_mer_unibench.py --root /data/mer_unibench --processor /ckpt/Qwen2.5-Omni-7B
    # 4 processes in parallel (each takes every 4th sample), then a check of everything
    for i in 0 1 2 3; do python scripts/prepare_mer_unibench.py --root R --processor P --shard $i/4 & done; wait
    python scripts/prepare_mer_unibench.py --root R --processor P --check
    # one set whose folder lives elsewhere; caches outside the (read-only) data folders
    python scripts/prepare_mer_unibench.py --set_root MELD=/data/meld-process --cache_root /scratch/cache --processor P
    # the generated miniature (tests, debug config): tiny-Thinker features, any set size
    python scripts/prepare_mer_unibench.py --root data/mer_unibench_mini --tiny --any_size

Decoding video needs PyAV: ``pip install 'merr1[media]'``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from merr1.components.data.media import (
    AudioFeaturizer,
    MediaConfig,
    PyAVFrameSource,
    build_media_entry,
    cache_path,
    save_media,
)
from merr1.components.data.mer_unibench_release import BENCHMARKS, KNOWN_BAD_CLIPS, media_files, read_test_set, spec_for

log = logging.getLogger("prepare_mer_unibench")
# Problems of a known-bad clip's media are named but not counted (KNOWN_BAD_CLIPS).
MEDIA_PROBLEMS = ("missing audio file", "missing video file", "unreadable media")


@dataclass
class SetReport:
    """What was found for one set: sizes, problems (name, kind, detail), cache counts."""

    dataset: str
    root: Path
    cache_dir: Path
    num_test: int = 0
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    known_problems: list[tuple[str, str, str]] = field(default_factory=list)
    num_cached: int = 0
    num_written: int = 0

    def add(self, name: str, kind: str, detail: str = "") -> None:
        known = KNOWN_BAD_CLIPS.get(self.dataset, {}).get(name)
        if known and kind in MEDIA_PROBLEMS:
            self.known_problems.append((name, kind, f"{detail} ({known})" if detail else known))
        else:
            self.problems.append((name, kind, detail))


@dataclass
class Job:
    """One sample to decode."""

    report: SetReport
    name: str
    audio: Path | None
    video: Path | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="folder holding the official set folders (mer2023-dataset-process, meld-process, ...)")
    parser.add_argument("--set_root", action="append", default=[], metavar="ID=DIR",
                        help="a set's own root folder (repeatable), e.g. MELD=/data/meld-process")
    parser.add_argument("--sets", nargs="*", default=None, metavar="ID",
                        help=f"sets to process (default: all of {list(BENCHMARKS)} under --root, or the --set_root ones)")
    parser.add_argument("--cache_root", type=Path, default=None,
                        help="write caches to CACHE_ROOT/<official folder>/ (default: <set root>/media_cache)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--processor", type=Path, help="checkpoint dir with preprocessor_config.json (needed to decode)")
    group.add_argument("--tiny", action="store_true", help="features for the tiny test Thinker")
    parser.add_argument("--modalities", nargs="*", default=["audio", "video"], choices=["audio", "video"])
    parser.add_argument("--shard", default="0/1", help="i/n: decode every n-th sample starting at i")
    parser.add_argument("--cache_dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--check", action="store_true", help="decode nothing: check the sets and the cache only")
    parser.add_argument("--any_size", action="store_true",
                        help="do not require the official test-set sizes (generated miniatures)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.check and args.processor is None and not args.tiny:
        parser.error("decoding needs --processor CHECKPOINT_DIR (or --tiny); --check alone decodes nothing")
    return args


def resolve_sets(args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    """(official id, root, cache dir) of every selected set; ValueError for bad arguments."""
    roots: dict[str, Path] = {}
    for item in args.set_root:
        key, sep, folder = item.partition("=")
        if not sep or not folder:
            raise ValueError(f"--set_root {item!r}: expected ID=DIR, e.g. MELD=/data/meld-process")
        roots[spec_for(key).id] = Path(folder)
    if args.sets is not None:
        selected = [spec_for(s).id for s in args.sets]
    elif args.root is not None:
        selected = list(BENCHMARKS)
    else:
        selected = [s for s in BENCHMARKS if s in roots]
    if not selected:
        raise ValueError("no set selected: give --root (and optionally --sets) or --set_root ID=DIR")
    out = []
    for dataset in selected:
        spec = BENCHMARKS[dataset]
        if dataset in roots:
            root = roots[dataset]
        elif args.root is not None:
            root = args.root / spec.folder
        else:
            raise ValueError(f"{dataset}: no root folder; give --root or --set_root {dataset}=DIR")
        cache = args.cache_root / spec.folder if args.cache_root is not None else root / "media_cache"
        out.append((dataset, root, cache))
    return out


def check_set(dataset: str, root: Path, cache_dir: Path, modalities: tuple[str, ...]) -> tuple[SetReport, list[Job]]:
    """Read one set, log its problems by name, and list the samples whose media can be decoded."""
    report = SetReport(dataset, root, cache_dir)
    try:
        rows = read_test_set(dataset, root)
    except (OSError, ValueError) as e:
        report.add("*", "unreadable set", str(e))
        return report, []
    report.num_test = len(rows)
    jobs, seen = [], set()
    for row in rows:
        if row.name in seen:
            report.add(row.name, "duplicate name")
            continue
        seen.add(row.name)
        if row.problem is not None:
            report.add(row.name, row.problem.kind, row.problem.detail)
        if row.subtitle is None:
            report.add(row.name, "missing subtitle", f"no row in {BENCHMARKS[dataset].subtitle_file}")
        try:
            cache_path(cache_dir, row.name)
        except ValueError as e:
            report.add(row.name, "unusable name", str(e))
            continue
        audio, video = media_files(dataset, root, row.name)
        ok = True
        if "audio" in modalities and not audio.is_file():
            report.add(row.name, "missing audio file", str(audio))
            ok = False
        if "video" in modalities and video is None:
            spec = BENCHMARKS[dataset]
            wanted = " or ".join(str(root / spec.video_dir / f"{row.name}{ext}") for ext in spec.video_exts)
            report.add(row.name, "missing video file", wanted)
            ok = False
        if ok:
            jobs.append(Job(report, row.name, audio if "audio" in modalities else None, video))
    return report, jobs


def decode(jobs: list[Job], config: MediaConfig, modalities: tuple[str, ...], progress: bool) -> None:
    """Decode every job whose cache entry is missing; failures are added to the set's report."""
    featurizer = AudioFeaturizer(config) if "audio" in modalities else None
    for job in tqdm(jobs, desc="prepare media", disable=not progress):
        path = cache_path(job.report.cache_dir, job.name)
        if path.is_file():
            job.report.num_cached += 1
            continue
        audio = {job.name: job.audio} if job.audio is not None else {}
        video = {job.name: job.video} if job.video is not None else {}
        try:
            media = build_media_entry(job.name, audio, video, modalities, config, featurizer, PyAVFrameSource)
        except ValueError as e:
            job.report.add(job.name, "unreadable media", str(e))
            continue
        save_media(path, media)
        job.report.num_written += 1


def check_cache(jobs: list[Job]) -> None:
    """--check: count the cache entries that exist and report the missing ones by name."""
    for job in jobs:
        if cache_path(job.report.cache_dir, job.name).is_file():
            job.report.num_cached += 1
        else:
            job.report.add(job.name, "not cached", "run without --check to decode it")


def summarize(reports: list[SetReport], any_size: bool) -> int:
    """Log every problem by name and a table of counts; the number of problems that count."""
    num_problems = 0
    for r in reports:
        expected = BENCHMARKS[r.dataset].num_test
        if r.num_test != expected and not any_size and not any(k == "unreadable set" for _, k, _ in r.problems):
            r.add("*", "wrong test-set size", f"{r.num_test} test names, the official release has {expected}")
        for name, kind, detail in r.problems:
            log.warning("%s: %s: %s%s", r.dataset, name, kind, f": {detail}" if detail else "")
        for name, kind, detail in r.known_problems:
            log.warning("%s: %s: %s: %s (known problem, not counted)", r.dataset, name, kind, detail)
        num_problems += len(r.problems)
    lines = [f"{'set':<12} {'test names':>10} {'official':>8} {'cached':>7} {'written':>7} {'problems':>8}  cache"]
    for r in reports:
        lines.append(
            f"{r.dataset:<12} {r.num_test:>10} {BENCHMARKS[r.dataset].num_test:>8} {r.num_cached:>7} "
            f"{r.num_written:>7} {len(r.problems):>8}  {r.cache_dir}"
        )
    print("\n".join(lines), flush=True)
    return num_problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    modalities = tuple(args.modalities)
    if not modalities:
        raise ValueError("--modalities: give audio, video or both")
    shard, num_shards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {args.shard}: need 0 <= i < n")
    reports, jobs = [], []
    for dataset, root, cache_dir in resolve_sets(args):
        report, set_jobs = check_set(dataset, root, cache_dir, modalities)
        reports.append(report)
        jobs += set_jobs
    mine = jobs[shard::num_shards]  # the same order in every process: shards never share a sample
    if args.check:
        check_cache(mine)
    else:
        config = MediaConfig.tiny() if args.tiny else MediaConfig.from_pretrained(args.processor)
        config.cache_dtype = args.cache_dtype
        decode(mine, config, modalities, progress=not args.no_progress)
    num_problems = summarize(reports, args.any_size)
    log.info("%d problem(s)%s; %d samples in shard %s", num_problems, " (listed above)" if num_problems else "",
             len(mine), args.shard)  # fmt: skip
    return 1 if num_problems else 0


if __name__ == "__main__":
    sys.exit(main())
