"""Manifests, JSON lists and folder search: round trips on a LibriSpeech-shaped tree and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from maebench import cli
from maebench.errors import MaebenchError
from maebench.manifest import AudioItem, find_audio, list_audio, read_json_list, read_manifest, write_manifest

# (relative path, samples, sample rate, channels): LibriSpeech layout <subset>/<spk>/<chapter>/<spk>-<chapter>-<n>.flac
TREE = [
    ("train-clean-100/19/198/19-198-0000.flac", 4000, 16000, 1),
    ("train-clean-100/19/198/19-198-0001.flac", 2500, 16000, 1),
    ("train-clean-100/19/227/19-227-0000.flac", 3100, 16000, 1),
    ("train-clean-100/103/1240/103-1240-0000.flac", 1700, 8000, 1),
    ("train-other-500/20/205/20-205-0000.flac", 5200, 16000, 2),
    ("dev-clean/84/121123/84-121123-0000.wav", 900, 44100, 1),
]


@pytest.fixture
def libri_tree(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech"
    rng = np.random.default_rng(0)
    for relpath, samples, rate, channels in TREE:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), 0.1 * rng.standard_normal((samples, channels)), rate)
    # what else a real LibriSpeech folder holds: transcripts and licence text, never audio
    (root / "train-clean-100/19/198/19-198.trans.txt").write_text("19-198-0000 HELLO\n")
    (root / "LICENSE.TXT").write_text("CC BY 4.0\n")
    return root


def test_manifest_round_trip_on_librispeech_layout(libri_tree: Path, tmp_path: Path):
    out = tmp_path / "manifests" / "train.tsv"
    assert write_manifest(libri_tree, out, progress=False) == len(TREE)

    lines = out.read_text().splitlines()
    assert lines[0] == str(libri_tree.resolve())
    expected = sorted((relpath, samples) for relpath, samples, _, _ in TREE)
    assert [tuple(line.split("\t")) for line in lines[1:]] == [(rel, str(n)) for rel, n in expected]
    assert [p.name for p in out.parent.iterdir()] == ["train.tsv"]  # atomic write leaves no temporary behind

    items = read_manifest(out)
    assert items == [AudioItem(libri_tree.resolve() / rel, n) for rel, n in expected]
    assert all(item.path.is_file() for item in items)
    assert list_audio(out) == items


def test_manifest_extension_filter_and_folder_search(libri_tree: Path, tmp_path: Path):
    assert write_manifest(libri_tree, tmp_path / "wav.tsv", extensions=(".wav",), progress=False) == 1
    found = find_audio(libri_tree)
    assert [item.path.relative_to(libri_tree).as_posix() for item in found] == sorted(rel for rel, *_ in TREE)
    assert all(item.num_samples is None for item in found)
    assert list_audio(libri_tree) == found


def test_unreadable_files_are_skipped_and_counted(libri_tree: Path, tmp_path: Path, capsys):
    (libri_tree / "train-clean-100/19/198/19-198-0002.flac").write_bytes(b"not audio at all" * 20)
    (libri_tree / "train-clean-100/19/198/19-198-0003.flac").write_bytes(b"")
    soundfile.write(str(libri_tree / "dev-clean/84/121123/84-121123-0001.wav"), np.zeros((0, 1)), 16000)
    out = tmp_path / "train.tsv"
    assert write_manifest(libri_tree, out, progress=False) == len(TREE)
    report = capsys.readouterr().out
    assert "skipped 3" in report and "19-198-0002.flac" in report
    assert "19-198-0002" not in out.read_text()


def test_relative_root_is_relative_to_the_manifest(libri_tree: Path):
    manifest = libri_tree.parent / "rel.tsv"
    manifest.write_text("LibriSpeech\ntrain-clean-100/19/198/19-198-0000.flac\t4000\n\n")
    assert read_manifest(manifest) == [AudioItem(libri_tree / "train-clean-100/19/198/19-198-0000.flac", 4000)]


def test_json_list_with_relative_and_absolute_paths(libri_tree: Path, tmp_path: Path):
    absolute = libri_tree / TREE[0][0]
    listing = {"data": [{"wav": "LibriSpeech/" + TREE[1][0], "labels": "/m/09x0r"}, {"wav": str(absolute)}]}
    path = tmp_path / "train_data.json"
    path.write_text(json.dumps(listing))
    items = read_json_list(path)
    assert items == [AudioItem(tmp_path / "LibriSpeech" / TREE[1][0]), AudioItem(absolute)]
    assert all(item.path.is_file() for item in items)
    assert list_audio(path) == items


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{root}\ntrain-clean-100/19/198/19-198-0000.flac 4000\n", "line 2"),  # space, not a tab
        ("{root}\ntrain-clean-100/19/198/19-198-0000.flac\t4000\nfoo.flac\tlots\n", "line 3"),
        ("{root}\nfoo.flac\t1\textra\n", "line 2"),
        ("", "empty"),
        ("/no/such/root/dir\nfoo.flac\t1\n", "/no/such/root/dir"),
    ],
)
def test_malformed_manifest_names_file_and_line(libri_tree: Path, tmp_path: Path, content: str, needle: str):
    path = tmp_path / "bad.tsv"
    path.write_text(content.format(root=libri_tree))
    with pytest.raises(MaebenchError) as err:
        read_manifest(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_empty_sources_are_one_line_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no audio here")
    header_only = tmp_path / "header_only.tsv"
    header_only.write_text(f"{empty}\n")
    no_data = tmp_path / "no_data.json"
    no_data.write_text('{"clips": []}')
    cases = [
        (lambda: read_manifest(tmp_path / "missing.tsv"), "missing.tsv"),
        (lambda: list_audio(tmp_path / "missing.tsv"), "missing.tsv"),
        (lambda: list_audio(tmp_path / "missing_dir"), "missing_dir"),
        (lambda: find_audio(tmp_path / "missing_dir"), "missing_dir"),
        (lambda: write_manifest(tmp_path / "missing_dir", tmp_path / "o.tsv", progress=False), "missing_dir"),
        (lambda: list_audio(empty), str(empty)),
        (lambda: write_manifest(empty, tmp_path / "o.tsv", progress=False), str(empty)),
        (lambda: list_audio(header_only), "header_only.tsv"),
        (lambda: list_audio(no_data), "no_data.json"),
        (lambda: list_audio(empty / "notes.txt"), "notes.txt"),
    ]
    for call, needle in cases:
        with pytest.raises(MaebenchError) as err:
            call()
        assert needle in str(err.value), str(err.value)
    assert not (tmp_path / "o.tsv").exists()


def test_cli_writes_manifest_and_refuses_to_overwrite(libri_tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "train.tsv"
    assert cli.main(["data", "manifest", str(libri_tree), "-o", str(out), "--ext", "flac", "--quiet"]) == 0
    assert len(read_manifest(out)) == len(TREE) - 1  # the .wav is left out
    assert cli.main(["data", "manifest", str(libri_tree), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["data", "manifest", str(libri_tree), "-o", str(out), "--overwrite", "--quiet"]) == 0
    assert len(read_manifest(out)) == len(TREE)
    assert cli.main(["data", "manifest", str(tmp_path / "nope"), "-o", str(tmp_path / "x.tsv")]) == 2
    assert "nope" in capsys.readouterr().err
