"""Toy datasets: the whole suite builds in under a minute, in the official layouts the real loaders read, with the
expected counts, labels and splits; builds are deterministic; the procedural speech fallback works; the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from maebench.cli import main as cli_main
from maebench.downstream import sounds, toy
from maebench.downstream.datasets import TASKS, build_toy, load_task
from maebench.downstream.tasks.speech_commands import KS1_CLASSES, KS2_WORDS, which_set
from maebench.errors import MaebenchError

HEX_NAME = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """The six-task toy suite at its small size (default speech back end: espeak-ng when installed), built once."""
    out = tmp_path_factory.mktemp("toy_suite")
    for name in TASKS:
        build_toy(name, out / name, size="small")
    return out


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ks2_toy(suite):
    root = suite / "ks2"
    task = load_task("ks2", root)
    assert task.is_toy and task.class_names == list(KS2_WORDS)
    fold = task.folds[0]
    assert (len(fold.train), len(fold.dev), len(fold.test)) == (110, 35, 35)
    for split, items in (("training", fold.train), ("validation", fold.dev), ("testing", fold.test)):
        assert {ex.label for ex in items} == set(range(35))
        assert all(HEX_NAME.match(ex.path.name) and which_set(ex.path.name) == split for ex in items)
    listed = (root / "validation_list.txt").read_text().split()
    assert sorted(listed) == sorted(ex.key for ex in fold.dev)
    assert len(list((root / "_background_noise_").glob("*.wav"))) == 2
    info = sf.info(str(fold.test[0].path))
    assert (info.samplerate, info.frames, info.subtype) == (16000, 16000, "PCM_16")


def test_ks1_toy(suite):
    task = load_task("ks1", suite / "ks1")
    fold = task.folds[0]
    count = {c: sum(ex.label == KS1_CLASSES.index(c) for ex in fold.train) for c in KS1_CLASSES}
    assert all(count[w] == 5 for w in KS1_CLASSES[:10]) and count["_unknown_"] == 12 and count["_silence_"] == 6
    assert len(fold.dev) == 16 + 4  # 10 commands + 6 auxiliary words, one crop per noise file
    assert len(fold.test) == 27 and {ex.label for ex in fold.test} == set(range(12))
    # each command has one file in the hash rule's testing range; SUPERB drops those
    train_root = suite / "ks1" / "speech_commands_v0.01"
    testing_range = [p for p in train_root.rglob("*_nohash_*.wav") if which_set(p.name) == "testing"]
    assert len(testing_range) == 10
    assert not {p for p in testing_range} & {ex.path for ex in fold.train + fold.dev}
    assert (suite / "ks1" / "speech_commands_test_set_v0.01" / "_silence_").is_dir()


def test_esc50_toy(suite):
    root = suite / "esc50"
    task = load_task("esc50", root)
    assert task.num_classes == 10 and len(task.folds) == 5
    with open(root / "meta" / "esc50.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    assert len(rows) == 100
    for row in rows:
        fold, src, take, target = Path(row["filename"]).stem.split("-")
        assert (fold, src, take, target) == (row["fold"], row["src_file"], row["take"], row["target"])
    for k, fold in enumerate(task.folds, start=1):
        assert len(fold.test) == 20 and sorted(ex.label for ex in fold.test) == sorted(list(range(10)) * 2)
        assert all(ex.path.name.startswith(f"{k}-") for ex in fold.test)
        assert len(fold.train) + len(fold.dev) == 80
    info = sf.info(str(task.folds[0].test[0].path))
    assert (info.samplerate, info.frames) == (44100, 5 * 44100)
    assert task.read(task.folds[0].test[0]).shape == (80000,)


def test_audioset_toy(suite):
    root = suite / "as20k"
    task = load_task("as20k", root)
    assert "Chirp, rising" in task.class_names and task.multilabel and task.metric == "mAP"
    assert '"Chirp, rising"' in (root / "class_labels_indices.csv").read_text()
    fold = task.folds[0]
    assert len(fold.train) + len(fold.dev) == 60 and len(fold.dev) == 6 and len(fold.test) == 30
    assert all(1 <= len(ex.label) <= 3 and list(ex.label) == sorted(ex.label) for ex in fold.train + fold.test)
    entries = json.loads((root / "eval.json").read_text())["data"]
    assert not Path(entries[0]["wav"]).is_absolute()  # relative to the root, so the toy can be moved
    big = load_task("as2m", root)
    assert len(big.folds[0].train) == 54 + 90 and len(big.sample_weights) == 144


def test_sid_toy(suite):
    task = load_task("sid", suite / "sid")
    fold = task.folds[0]
    assert task.class_names == list(toy.SID_TOY_SPEAKERS)
    assert (len(fold.train), len(fold.dev), len(fold.test)) == (32, 8, 8)
    for items, per_speaker in ((fold.train, 4), (fold.dev, 1), (fold.test, 1)):
        assert sorted(ex.label for ex in items) == sorted(list(range(8)) * per_speaker)
    assert sum("test/wav" in ex.path.as_posix() for ex in fold.test) == 2
    lines = (suite / "sid" / "iden_split.txt").read_text().splitlines()
    assert all(re.match(r"^[123] id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav$", line) for line in lines)


def test_er_toy(suite):
    task = load_task("er", suite / "er")
    assert [f.name for f in task.folds] == [f"Session{k}" for k in range(1, 6)]
    for k, fold in enumerate(task.folds, start=1):
        # per session 20 utterances; fru and xxx dropped; exc merged into hap
        assert sorted(ex.label for ex in fold.test) == [0] * 4 + [1] * 6 + [2] * 4 + [3] * 4
        assert all(ex.key.startswith(f"Session{k}/sentences/wav/") for ex in fold.test)
        assert len(fold.train) + len(fold.dev) == 72
    labels = "".join(p.read_text() for p in (suite / "er" / "Session1" / "dialog" / "EmoEvaluation").glob("*.txt"))
    assert "\tfru\t" in labels and "\txxx\t" in labels and "\texc\t" in labels


@pytest.mark.parametrize("name", ["ks2", "esc50", "sid"])
def test_toy_tasks_are_learnable_from_simple_features(suite, name):
    """Mean log-mel features + logistic regression beat chance clearly: the toy classes carry real signal. (ER's
    emotions are deliberately mild and its small size has 72 training clips: at full size these features reach
    ~41% against a 28% majority class, measured, too slow for a unit test.)"""
    import torch
    from sklearn.linear_model import LogisticRegression

    task = load_task(name, suite / name)
    fold = task.folds[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only add contention on a busy CI box
    try:
        train, test = features(task, fold.train), features(task, fold.test)
    finally:
        torch.set_num_threads(threads)
    mean, std = train.mean(0), train.std(0) + 1e-6
    clf = LogisticRegression(C=0.1, max_iter=2000).fit((train - mean) / std, [ex.label for ex in fold.train])
    accuracy = clf.score((test - mean) / std, [ex.label for ex in fold.test])
    chance = 100 / task.num_classes
    print(f"{name} toy, simple-feature logistic regression: {100 * accuracy:.1f}% (chance {chance:.1f})")
    assert accuracy > 2.0 / task.num_classes


def test_full_size_test_sets_hold_200_items(monkeypatch, tmp_path):
    """At the default (full) size every task tests on >= 200 items (summed over folds), every class in every test
    set, so one item moves a score by at most half a point. Audio is stubbed: only the layout is counted here."""
    monkeypatch.setattr(toy, "synthesize", lambda jobs, backend: [np.full(800, 0.1, np.float32) for _ in jobs])
    monkeypatch.setattr(toy, "_esc50_clip", lambda seed, name, category, rate: np.zeros(441, np.float32))
    monkeypatch.setattr(toy, "_audioset_clip", lambda rng, labels: np.zeros(160, np.float32))
    monkeypatch.setattr(toy, "render_noise", lambda kind, rng, seconds: np.full(int(seconds * 16000), 0.01))
    monkeypatch.delenv(toy.TOY_SIZE_ENV)
    for name in TASKS:
        task = load_task(name, build_toy(name, tmp_path / name, speech_backend="procedural"))
        tested = [ex for fold in task.folds for ex in fold.test]
        labels = {c for ex in tested for c in (ex.label if task.multilabel else [ex.label])}
        assert len(tested) >= 200 and labels == set(range(task.num_classes)), (name, len(tested))
        assert json.loads((task.root / toy.TOY_MARKER).read_text())["size"] == "full"
    with pytest.raises(MaebenchError, match="unknown toy size 'huge'"):
        build_toy("ks2", tmp_path / "huge", size="huge")


def features(task, items) -> np.ndarray:
    """Mean log-mel over four time quarters plus the overall std: a crude utterance embedding."""
    import torch
    import torchaudio

    rows = []
    for ex in items:
        fb = torchaudio.compliance.kaldi.fbank(task.read(ex)[None] * 32768, num_mel_bins=40, dither=0.0)
        rows.append(torch.cat([c.mean(0) for c in torch.tensor_split(fb, 4)] + [fb.std(0)]).numpy())
    return np.stack(rows)


def test_build_is_deterministic(suite, tmp_path):
    again = build_toy("sid", tmp_path / "sid", size="small")
    first, second = files_under(suite / "sid"), files_under(again)
    assert list(first) == list(second)
    assert first == second  # same bytes, speech included
    other = files_under(build_toy("sid", tmp_path / "sid_seed1", seed=1, size="small"))
    assert other != first


def test_procedural_speech_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv(sounds.SPEECH_BACKEND_ENV, "procedural")
    first = build_toy("ks1", tmp_path / "a")
    assert json.loads((first / toy.TOY_MARKER).read_text())["speech_backend"] == "procedural"
    task = load_task("ks1", first)
    assert len(task.folds[0].train) == 68 and len(task.folds[0].test) == 27
    assert files_under(first) == files_under(build_toy("ks1", tmp_path / "b"))
    # distinct words and speakers give distinct audio
    voice = sounds.Voice(variant=2, pitch=40)
    yes, no = sounds.formant_say("yes", voice), sounds.formant_say("no", voice)
    assert yes.shape != no.shape or not np.allclose(yes, no)
    assert not np.array_equal(sounds.formant_say("yes", sounds.Voice(variant=8, pitch=70)), yes)


def test_espeak_backend_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sounds.shutil, "which", lambda name: None)
    monkeypatch.delenv(sounds.SPEECH_BACKEND_ENV, raising=False)
    assert sounds.resolve_speech_backend("auto") == "procedural"
    with pytest.raises(MaebenchError, match="espeak-ng is not installed"):
        build_toy("sid", tmp_path / "sid", speech_backend="espeak")


@pytest.mark.skipif(not sounds.espeak_available(), reason="espeak-ng not installed")
def test_espeak_voices_differ():
    base = sounds.Voice(variant=0, pitch=30, speed=150)
    one = sounds.espeak_say("seven", base)
    assert one.dtype == np.float32 and 0.2 * 16000 < len(one) < 1.5 * 16000
    assert not np.array_equal(one, sounds.espeak_say("seven", base.restyled(pitch=30)))
    np.testing.assert_array_equal(one, sounds.espeak_say("seven", base))


def test_load_task_without_root_builds_toy_once_atomically(monkeypatch, capsys):
    monkeypatch.setenv(sounds.SPEECH_BACKEND_ENV, "procedural")
    task = load_task("sid")
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "building the toy sid dataset" in message
    assert task.is_toy and task.root.name == "sid" and task.probe_defaults["linear"]["max_steps"] == 300
    assert not [p for p in task.root.parent.iterdir() if ".tmp-" in p.name]
    stamp = (task.root / "iden_split.txt").stat().st_mtime_ns
    again = load_task("sid")
    assert capsys.readouterr().err == "" and (again.root / "iden_split.txt").stat().st_mtime_ns == stamp
    assert again.data_fingerprint() == task.data_fingerprint()


def test_cli_data_toy_and_check(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(sounds.SPEECH_BACKEND_ENV, "procedural")
    assert cli_main(["data", "toy", "--task", "er", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "er" / "Session5" / "sentences" / "wav").is_dir()
    assert cli_main(["data", "toy", "--task", "er", "-o", str(tmp_path)]) == 2  # exists, no --overwrite
    capsys.readouterr()
    assert cli_main(["data", "check", "--task", "er", "--data", str(tmp_path / "er")]) == 0
    out = capsys.readouterr().out
    assert "layout OK" in out and "Session5" in out and "neu" in out
    label_dir = tmp_path / "er" / "Session2" / "dialog" / "EmoEvaluation"
    for path in label_dir.glob("*.txt"):
        path.unlink()
    assert cli_main(["data", "check", "--task", "er", "--data", str(tmp_path / "er")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(label_dir) in err


def test_cli_data_toy_size_flag_beats_the_environment(monkeypatch, tmp_path, capsys):
    """`data toy --size full` under $MAEBENCH_TOY_SIZE=small (the test suite's setting) builds the full toy."""
    monkeypatch.setattr(toy, "synthesize", lambda jobs, backend: [np.full(800, 0.1, np.float32) for _ in jobs])
    monkeypatch.setattr(toy, "render_noise", lambda kind, rng, seconds: np.full(int(seconds * 16000), 0.01))
    monkeypatch.setenv(toy.TOY_SIZE_ENV, "small")
    for size in ("full", "small"):
        assert cli_main(["data", "toy", "--task", "ks2", "--size", size, "-o", str(tmp_path / size)]) == 0
        marker = json.loads((tmp_path / size / "ks2" / toy.TOY_MARKER).read_text())
        assert marker["size"] == size
    tested = {size: len(load_task("ks2", tmp_path / size / "ks2").folds[0].test) for size in ("full", "small")}
    assert tested["full"] >= 200 > tested["small"]
    with pytest.raises(SystemExit):
        cli_main(["data", "toy", "--task", "ks2", "--size", "huge", "-o", str(tmp_path / "huge")])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
