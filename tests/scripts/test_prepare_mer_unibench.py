"""scripts/prepare_mer_unibench.py on the generated miniature (issue 18): sizes, every missing or
unreadable file named, resumable, sharded. Audio-only runs need no PyAV; the video runs skip
without it."""

import importlib.util
import logging
import shutil
import sys
from pathlib import Path

import pytest

from merr1.components.data.media import AUDIO_KEYS, MEDIA_KEYS, cache_path, load_media
from merr1.components.data.mer_unibench_miniature import miniature_test_names, write_miniature
from merr1.components.data.mer_unibench_release import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]
NUM_TEST = {k: len(miniature_test_names(k)) for k in BENCHMARKS}  # 43 in all


def _script():
    spec = importlib.util.spec_from_file_location("prepare_mer_unibench", REPO / "scripts" / "prepare_mer_unibench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture
def audio_mini(tmp_path):
    return write_miniature(tmp_path / "mini", with_video=False)


def _cached(root):
    return {k: sorted(p.name[: -len(".safetensors")] for p in (root / s.folder / "media_cache").glob("*.safetensors"))
            for k, s in BENCHMARKS.items() if (root / s.folder / "media_cache").is_dir()}  # fmt: skip


def _table(out):
    """The summary table: set -> (test names, official size, cached, written, problems)."""
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in BENCHMARKS]
    return {row[0]: tuple(int(x) for x in row[1:6]) for row in rows}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_audio_only_all_sets_resumable(script, audio_mini, caplog, capsys):
    base = ["--root", str(audio_mini), "--tiny", "--modalities", "audio", "--no_progress"]
    assert script.main([*base, "--any_size"]) == 0
    assert _cached(audio_mini) == {k: sorted(miniature_test_names(k)) for k in BENCHMARKS}
    media = load_media(cache_path(audio_mini / "cmumosei-process" / "media_cache", "--qXJuDtHPw_5"))
    assert set(media) == set(AUDIO_KEYS) and media["input_features"].shape[1] == 16
    table = _table(capsys.readouterr().out)
    assert table == {k: (NUM_TEST[k], s.num_test, 0, NUM_TEST[k], 0) for k, s in BENCHMARKS.items()}
    # resumable: nothing left to write
    assert script.main([*base, "--any_size"]) == 0
    table = _table(capsys.readouterr().out)
    assert table == {k: (NUM_TEST[k], s.num_test, NUM_TEST[k], 0, 0) for k, s in BENCHMARKS.items()}
    # the official sizes are required unless --any_size: every set is named with both sizes
    caplog.clear()
    assert script.main(base) == 1
    warnings = _warnings(caplog)
    for dataset, spec in BENCHMARKS.items():
        assert (f"{dataset}: *: wrong test-set size: {NUM_TEST[dataset]} test names, the official release has "
                f"{spec.num_test}") in warnings  # fmt: skip


def test_missing_and_unreadable_files_are_named(script, audio_mini, caplog):
    (audio_mini / "meld-process" / "subaudio" / "test_dia0_utt1.wav").unlink()
    (audio_mini / "cmumosei-process" / "subaudio" / "-MeTTeMJBNc_0.wav").write_bytes(b"junk")
    (audio_mini / "meld-process" / "subaudio" / "test_dia279_utt15.wav").write_bytes(b"junk")  # the known-bad clip
    rows = (audio_mini / "sims-process" / "transcription-engchi-polish.csv").read_text().splitlines()
    (audio_mini / "sims-process" / "transcription-engchi-polish.csv").write_text(
        "\n".join(r for r in rows if not r.startswith("video_0012_0003")) + "\n"
    )
    argv = ["--root", str(audio_mini), "--sets", "MELD", "CMUMOSEI", "SIMS", "--tiny", "--modalities", "audio",
            "--any_size", "--no_progress"]  # fmt: skip
    assert script.main(argv) == 1
    warnings = "\n".join(_warnings(caplog))
    wav = audio_mini / "meld-process" / "subaudio" / "test_dia0_utt1.wav"
    assert f"MELD: test_dia0_utt1: missing audio file: {wav}" in warnings
    assert "CMUMOSEI: -MeTTeMJBNc_0: unreadable media: unreadable audio" in warnings
    assert "SIMS: video_0012_0003: missing subtitle: no row in transcription-engchi-polish.csv" in warnings
    assert ("MELD: test_dia279_utt15: unreadable media: unreadable audio" in warnings
            and "flagged as problematic by the official MELD preprocessing) (known problem, not counted)" in warnings)
    cached = _cached(audio_mini)
    assert "test_dia0_utt1" not in cached["MELD"] and "-MeTTeMJBNc_0" not in cached["CMUMOSEI"]
    assert "video_0012_0003" in cached["SIMS"]  # its media are fine; the evaluation skips it (no subtitle)

    # the known-bad clip alone does not fail the run
    (audio_mini / "meld-process" / "subaudio" / "test_dia279_utt15.wav").write_bytes(b"junk")
    shutil.copy(audio_mini / "meld-process" / "subaudio" / "test_dia0_utt0.wav", wav)
    shutil.copy(audio_mini / "cmumosei-process" / "subaudio" / "tO68uTk-T_E_1.wav",
                audio_mini / "cmumosei-process" / "subaudio" / "-MeTTeMJBNc_0.wav")  # fmt: skip
    assert script.main(argv[:5] + argv[6:]) == 0  # MELD and CMUMOSEI


def test_shards_check_and_other_roots(script, audio_mini, tmp_path, caplog):
    cache_root = tmp_path / "cache"
    meld = tmp_path / "elsewhere" / "meld"
    shutil.copytree(audio_mini / "meld-process", meld)
    base = ["--set_root", f"MELD={meld}", "--root", str(audio_mini), "--sets", "MELD", "SIMSv2",
            "--cache_root", str(cache_root), "--tiny", "--modalities", "audio", "--any_size", "--no_progress"]  # fmt: skip
    caplog.clear()
    assert script.main([*base, "--check"]) == 1
    assert "SIMSv2: csbgs2_0005_00077: not cached: run without --check to decode it" in _warnings(caplog)
    assert script.main([*base, "--shard", "0/2"]) == 0
    assert script.main([*base, "--shard", "1/2"]) == 0
    caplog.clear()
    assert script.main([*base, "--check"]) == 0
    expected = {"meld-process": "MELD", "simsv2-process": "SIMSv2"}
    for folder, dataset in expected.items():
        names = sorted(p.name[: -len(".safetensors")] for p in (cache_root / folder).iterdir())
        assert names == sorted(miniature_test_names(dataset))
    assert not (meld / "media_cache").exists() and not (audio_mini / "meld-process" / "media_cache").exists()


def test_argument_errors(script, tmp_path):
    with pytest.raises(ValueError, match="no set selected"):
        script.main(["--tiny"])
    with pytest.raises(ValueError, match="unknown MER-UniBench data set 'MOSEI2'"):
        script.main(["--set_root", "MOSEI2=/x", "--tiny"])
    with pytest.raises(ValueError, match="expected ID=DIR"):
        script.main(["--set_root", "MELD", "--tiny"])
    with pytest.raises(SystemExit):  # decoding needs --processor or --tiny
        script.main(["--root", str(tmp_path)])
    assert script.main(["--root", str(tmp_path), "--sets", "SIMS", "--check", "--no_progress"]) == 1  # no files


def test_audio_and_video(script, tmp_path, caplog):
    pytest.importorskip("av")
    root = write_miniature(tmp_path / "mini")
    (root / "mer2023-dataset-process" / "video" / "sample_00000102.mp4").unlink()
    (root / "iemocap-process" / "subvideo-tgt" / "Ses05M_impro07_M021.avi").write_bytes(b"junk")
    argv = ["--root", str(root), "--sets", "MER2023", "IEMOCAPFour", "OVMERDPlus", "--tiny", "--any_size", "--no_progress"]
    assert script.main(argv) == 1
    warnings = "\n".join(_warnings(caplog))
    video = root / "mer2023-dataset-process" / "video"
    assert (f"MER2023: sample_00000102: missing video file: {video / 'sample_00000102.mp4'} or "
            f"{video / 'sample_00000102.avi'}") in warnings  # fmt: skip
    assert "IEMOCAPFour: Ses05M_impro07_M021: unreadable media: unreadable video" in warnings
    cached = _cached(root)
    assert cached["MER2023"] == ["sample_00000101", "sample_00000103", "sample_00000104"]  # 104 is an .avi
    assert cached["IEMOCAPFour"] == ["Ses05F_impro01_F000", "Ses05F_script02_1a_F010", "Ses05M_script03_2_M045"]
    assert len(cached["OVMERDPlus"]) == 4
    media = load_media(cache_path(root / "mer2023-dataset-process" / "media_cache", "sample_00000104"))
    assert set(media) == set(MEDIA_KEYS) and media["video_grid_thw"].tolist() == [[1, 2, 2]]
