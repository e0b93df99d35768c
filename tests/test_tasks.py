"""Task loaders on small hand-made layouts: split rules, label mappings, folds, parsing, errors and audio windows."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from maebench.audio import read_audio
from maebench.downstream import datasets
from maebench.downstream.tasks import TASKS, check_layout, load_task
from maebench.downstream.tasks.audioset import label_frequency_weights
from maebench.downstream.tasks.base import Example, Task, holdout
from maebench.downstream.tasks.probe_settings import probe_defaults
from maebench.downstream.tasks.speech_commands import KS1_CLASSES, KS2_WORDS, hash_percentage, which_set
from maebench.errors import MaebenchError


def write_wav(path: Path, seconds: float = 0.1, rate: int = 16000, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = (np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * rate))).astype(np.float32)
    sf.write(str(path), wav, rate, subtype="FLOAT")
    return wav


def reference_split(name: str) -> str:
    """The Speech Commands README formula, written out independently of the loader."""
    speaker = name.split("_nohash_")[0]
    value = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    pct = (value % (2**27)) * (100.0 / (2**27 - 1))
    return "validation" if pct < 10 else "testing" if pct < 20 else "training"


def speaker_in(split: str, start: int = 0) -> str:
    """The first 8-hex speaker id (counting from `start`) that the formula puts in `split`."""
    n = start
    while reference_split(f"{n:08x}_nohash_0.wav") != split:
        n += 1
    return f"{n:08x}"


# ---------------------------------------------------------------------------------------------- speech commands
def test_hash_rule_matches_formula_on_hand_picked_names():
    names = ["0a7c2a8d_nohash_0.wav", "0a7c2a8d_nohash_3.wav", "3cfc6b3a_nohash_1.wav", "c50f55b8_nohash_0.wav",
             "ffd2ba2f_nohash_4.wav", "00000000_nohash_0.wav"] + [f"{speaker_in(s)}_nohash_2.wav"
                                                                   for s in ("validation", "testing", "training")]
    for name in names:
        assert which_set(name) == reference_split(name), name
        assert which_set(f"yes/{name}") == reference_split(name)  # folders do not matter, only the speaker part
    assert which_set("0a7c2a8d_nohash_0.wav") == which_set("0a7c2a8d_nohash_3.wav")  # one speaker, one split
    assert {which_set(f"{speaker_in(s)}_nohash_0.wav") for s in ("validation", "testing", "training")} == {
        "validation", "testing", "training"}
    pct = hash_percentage("c50f55b8_nohash_0.wav")
    assert 0.0 <= pct <= 100.0


def make_ks1(tmp_path: Path, test_layout: str = "parent") -> Path:
    """A tiny v0.01 layout: yes/no/.../go + two auxiliary words, noise files, and a 12-folder test set."""
    parent = tmp_path / "sc"
    train_root = parent / "speech_commands_v0.01"
    tr, va, te = speaker_in("training"), speaker_in("validation"), speaker_in("testing")
    tr2 = speaker_in("training", int(tr, 16) + 1)
    for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "bed", "marvin"):
        for speaker in (tr, tr2, va, te):
            write_wav(train_root / word / f"{speaker}_nohash_0.wav")
    write_wav(train_root / "_background_noise_" / "white_noise.wav", seconds=3.0)
    write_wav(train_root / "_background_noise_" / "pink_noise.wav", seconds=2.5)
    (train_root / "_background_noise_" / "README.md").write_text("noise\n")
    if test_layout == "parent":
        test_root = parent / "speech_commands_test_set_v0.01"
    elif test_layout == "inside":
        test_root = train_root / "test_set"
    else:
        test_root = tmp_path / "elsewhere"
    for cls in KS1_CLASSES:
        write_wav(test_root / cls / f"{te}_nohash_{len(cls)}.wav")
    return parent


def test_ks1_hash_split_unknown_and_silence(tmp_path):
    parent = make_ks1(tmp_path)
    task = load_task("ks1", parent)
    fold = task.folds[0]
    unknown, silence = KS1_CLASSES.index("_unknown_"), KS1_CLASSES.index("_silence_")
    words = [ex for ex in fold.train if ex.label != silence]
    # 12 words x 2 training-range speakers; validation-range files -> dev; testing-range files dropped
    assert len(words) == 24
    assert all(reference_split(ex.path.name) == "training" for ex in words)
    dev_words = [ex for ex in fold.dev if ex.label != silence]
    assert len(dev_words) == 12 and all(reference_split(ex.path.name) == "validation" for ex in dev_words)
    kept = {ex.path for ex in fold.train + fold.dev}
    assert not any(reference_split(p.name) == "testing" for p in kept)
    # auxiliary words map to _unknown_, commands to themselves
    for ex in words:
        word = ex.path.parent.name
        assert ex.label == (KS1_CLASSES.index(word) if word in KS1_CLASSES else unknown)
    assert sum(ex.label == unknown for ex in words) == 4
    # _silence_: about N/11 one-second training crops, one dev crop per noise file, all inside their files
    train_silence = [ex for ex in fold.train if ex.label == silence]
    dev_silence = [ex for ex in fold.dev if ex.label == silence]
    assert len(train_silence) == round(24 / 11) and len(dev_silence) == 2
    for ex in train_silence + dev_silence:
        assert ex.num_samples == 16000 and 0 <= ex.offset <= sf.info(str(ex.path)).frames - 16000
        assert ex.key == f"_background_noise_/{ex.path.name}@{ex.offset}"
    assert [ex.offset for ex in load_task("ks1", parent).folds[0].train] == [ex.offset for ex in fold.train]
    # class-balancing weights (s3prl): N / count(class)
    counts = {c: sum(ex.label == c for ex in fold.train) for c in range(12)}
    assert task.sample_weights == pytest.approx([len(fold.train) / counts[ex.label] for ex in fold.train])
    # test set: one per class folder, labelled by folder
    assert sorted(ex.label for ex in fold.test) == list(range(12))
    assert all(KS1_CLASSES[ex.label] == ex.path.parent.name for ex in fold.test)
    assert task.metric == "accuracy" and task.class_names == list(KS1_CLASSES)


def test_ks1_applies_s3prl_gain_of_minus_3_db(tmp_path):
    """s3prl's speech_commands dataset reads every file through sox with "gain -3.0" (10 ** (-3 / 20)); the cached
    features of a gained task never mix with ungained ones (the data fingerprint differs)."""
    import dataclasses

    from maebench.audio import read_audio

    task = load_task("ks1", make_ks1(tmp_path))
    for ex in (task.folds[0].train[0], task.folds[0].test[0]):
        raw = read_audio(ex.path)
        torch.testing.assert_close(task.read(ex), raw * 10 ** (-3 / 20))
    silence = next(ex for ex in task.folds[0].train if ex.num_samples)
    raw = read_audio(silence.path)[silence.offset : silence.offset + 16000]
    torch.testing.assert_close(task.read(silence), raw * 10 ** (-3 / 20))
    assert task.gain_db == -3.0
    assert dataclasses.replace(task, gain_db=0.0).data_fingerprint() != task.data_fingerprint()


@pytest.mark.parametrize("layout", ["inside", "parent"])
def test_ks1_accepts_both_test_set_locations(tmp_path, layout):
    parent = make_ks1(tmp_path, layout)
    inner = parent / "speech_commands_v0.01"
    task = load_task("ks1", inner)  # ROOT = the v0.01 folder; test set at ROOT/test_set or ../speech_commands_test...
    assert len(task.folds[0].test) == 12


def test_ks1_missing_test_set_names_the_candidates(tmp_path):
    parent = make_ks1(tmp_path, "elsewhere")
    with pytest.raises(MaebenchError, match="speech_commands_test_set_v0.01"):
        load_task("ks1", parent / "speech_commands_v0.01")


def make_ks2(tmp_path: Path) -> Path:
    root = tmp_path / "speech_commands_v0.02"
    tr, va, te = speaker_in("training"), speaker_in("validation"), speaker_in("testing")
    for word in KS2_WORDS:
        for speaker in (tr, va, te):
            write_wav(root / word / f"{speaker}_nohash_0.wav", seconds=0.05)
    write_wav(root / "_background_noise_" / "white_noise.wav")
    (root / "validation_list.txt").write_text("".join(f"{w}/{va}_nohash_0.wav\n" for w in KS2_WORDS))
    (root / "testing_list.txt").write_text("".join(f"{w}/{te}_nohash_0.wav\n" for w in KS2_WORDS))
    return root


def test_ks2_official_lists(tmp_path):
    root = make_ks2(tmp_path)
    task = load_task("ks2", root)
    fold = task.folds[0]
    assert (len(fold.train), len(fold.dev), len(fold.test)) == (35, 35, 35)
    assert task.num_classes == 35 and "_silence_" not in task.class_names
    for split, items in (("training", fold.train), ("validation", fold.dev), ("testing", fold.test)):
        assert all(reference_split(ex.path.name) == split for ex in items)
        assert sorted(ex.label for ex in items) == list(range(35))
        assert all(task.class_names[ex.label] == ex.path.parent.name for ex in items)
    assert not any("_background_noise_" in ex.key for ex in fold.train)


def test_ks2_missing_list_and_missing_listed_file_are_named(tmp_path):
    root = make_ks2(tmp_path)
    (root / "testing_list.txt").unlink()
    with pytest.raises(MaebenchError, match=re.escape(str(root / "testing_list.txt"))):
        load_task("ks2", root)
    (root / "testing_list.txt").write_text("yes/deadbeef_nohash_0.wav\n")
    with pytest.raises(MaebenchError, match="deadbeef_nohash_0.wav"):
        load_task("ks2", root)
    with pytest.raises(MaebenchError, match=re.escape(str(root / "testing_list.txt"))):
        check_layout("ks2", root)


# ------------------------------------------------------------------------------------------------------ IEMOCAP
def make_iemocap(tmp_path: Path) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    emotions = ["neu", "hap", "ang", "sad", "exc", "fru", "xxx", "neu", "sad", "ang", "hap", "exc"]
    for k in range(1, 6):
        dialog = f"Ses0{k}F_impro01"
        blocks = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"]
        for n, emo in enumerate(emotions):
            utt = f"{dialog}_{'FM'[n % 2]}{n:03d}"
            write_wav(root / f"Session{k}" / "sentences" / "wav" / dialog / f"{utt}.wav", seconds=0.05)
            blocks.append(f"[{n}.0000 - {n}.5000]\t{utt}\t{emo}\t[2.5000, 3.0000, 3.5000]\n"
                          f"C-E2:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n")
        evaluation = root / f"Session{k}" / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True)
        (evaluation / f"{dialog}.txt").write_text("\n".join(blocks))
        (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral; ()\n")
    return root


def test_er_folds_labels_and_dev(tmp_path):
    root = make_iemocap(tmp_path)
    task = load_task("er", root)
    assert task.class_names == ["neu", "hap", "ang", "sad"] and len(task.folds) == 5
    for k, fold in enumerate(task.folds, start=1):
        assert fold.name == f"Session{k}"
        assert {ex.key.split("/")[0] for ex in fold.test} == {f"Session{k}"}
        assert all(f"Session{k}/" not in ex.key for ex in fold.train + fold.dev)
        # 12 lines per session, fru and xxx dropped -> 10 kept; exc counted as hap
        assert len(fold.test) == 10
        assert sorted(ex.label for ex in fold.test) == [0, 0, 1, 1, 1, 1, 2, 2, 3, 3]
        assert len(fold.train) + len(fold.dev) == 40
        assert len(fold.dev) == 40 - int((1 - 0.2) * 40)  # s3prl: random_split(train, [int(0.8 * n), rest])
        assert not {ex.key for ex in fold.train} & {ex.key for ex in fold.dev}
    exc_utt = next(ex for ex in task.folds[0].test if ex.path.stem.endswith("004"))
    assert task.class_names[exc_utt.label] == "hap"
    assert [ex.key for ex in load_task("er", root).folds[2].dev] == [ex.key for ex in task.folds[2].dev]


def test_er_malformed_label_line_is_named(tmp_path):
    root = make_iemocap(tmp_path)
    path = root / "Session3" / "dialog" / "EmoEvaluation" / "Ses03F_impro01.txt"
    path.write_text(path.read_text() + "\n[1.0 - 2.0] Ses03F_impro01_F999 neu\n")
    with pytest.raises(MaebenchError, match=re.escape(str(path))):
        load_task("er", root)


# ----------------------------------------------------------------------------------------------------- AudioSet
CSV = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/02zsn,"Female speech, woman speaking"\n3,/m/0ytgt,"Child speech, kid speaking"\n'  # noqa: E501


def make_audioset(tmp_path: Path, unbalanced: bool = True) -> Path:
    root = tmp_path / "audioset"
    root.mkdir()
    (root / "class_labels_indices.csv").write_text(CSV)
    mids = ["/m/09x0r", "/m/05zppz", "/m/02zsn", "/m/0ytgt"]
    outside = tmp_path / "elsewhere" / "abs.wav"
    write_wav(outside)

    def entries(split: str, n: int) -> list[dict]:
        out = []
        for i in range(n):
            rel = f"audio/{split}/Y{split}{i:03d}.wav"
            write_wav(root / rel, seconds=0.05, seed=i)
            out.append({"wav": rel, "labels": ",".join(mids[j] for j in sorted({i % 4, (i * 3) % 4}))})
        return out

    (root / "balanced_train.json").write_text(json.dumps({"data": entries("bal", 20)}))
    (root / "eval.json").write_text(json.dumps({"data": entries("eval", 6) + [{"wav": str(outside),
                                                                                 "labels": "/m/0ytgt,/m/09x0r"}]}))
    if unbalanced:
        (root / "unbalanced_train.json").write_text(json.dumps({"data": entries("unbal", 12)}))
    return root


def test_audioset_csv_with_quoted_commas_and_multilabel(tmp_path):
    root = make_audioset(tmp_path)
    task = load_task("as20k", root)
    assert task.class_names == ["Speech", "Male speech, man speaking", "Female speech, woman speaking",
                                "Child speech, kid speaking"]
    assert task.metric == "mAP" and task.multilabel
    fold = task.folds[0]
    assert len(fold.train) == 18 and len(fold.dev) == 2 and len(fold.test) == 7
    assert fold.test[-1].path == tmp_path / "elsewhere" / "abs.wav" and fold.test[-1].label == (0, 3)
    assert fold.test[1].label == (1, 3) and fold.test[0].label == (0,)  # i=1: {1, 3}; i=0: {0}
    assert task.sample_weights is None


def test_as2m_adds_unbalanced_with_label_frequency_weights(tmp_path):
    root = make_audioset(tmp_path)
    task = load_task("as2m", root)
    train = task.folds[0].train
    assert len(train) == 18 + 12
    counts = np.zeros(4)
    for ex in train:
        counts[list(ex.label)] += 1
    expected = [sum(1000.0 / (counts[c] + 0.01) for c in ex.label) for ex in train]
    assert task.sample_weights == pytest.approx(expected)
    assert label_frequency_weights([Example(Path("a"), (0, 1)), Example(Path("b"), (1,))], 2) == pytest.approx(
        [1000 / 1.01 + 1000 / 2.01, 1000 / 2.01])
    (root / "unbalanced_train.json").unlink()
    with pytest.raises(MaebenchError, match="unbalanced_train.json"):
        load_task("as2m", root)
    load_task("as20k", root)  # as20k does not need it


def test_audioset_bad_files_are_named(tmp_path):
    root = make_audioset(tmp_path)
    (root / "eval.json").write_text('{"data": [{"wav": "x.wav", "labels": "/m/unknown"}]}')
    with pytest.raises(MaebenchError, match="/m/unknown"):
        load_task("as20k", root)
    (root / "eval.json").write_text("{not json")
    with pytest.raises(MaebenchError, match=re.escape(str(root / "eval.json"))):
        load_task("as20k", root)
    (root / "class_labels_indices.csv").unlink()
    with pytest.raises(MaebenchError, match="class_labels_indices.csv"):
        check_layout("as20k", root)


# ------------------------------------------------------------------------------------------------------- ESC-50
def make_esc50(tmp_path: Path) -> Path:
    root = tmp_path / "ESC-50-master"
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for target, category in enumerate(("dog", "rooster", "pig")):
        for fold in range(1, 6):
            for i, take in enumerate("ABC"):
                src = 1000 * target + 10 * fold + (0 if take != "C" else 1)
                name = f"{fold}-{src}-{take}-{target}.wav"
                write_wav(root / "audio" / name, seconds=0.05, rate=44100, seed=i)
                lines.append(f"{name},{fold},{target},{category},{target == 0},{src},{take}")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    return root


def test_esc50_folds_and_grouped_dev(tmp_path):
    root = make_esc50(tmp_path)
    task = load_task("esc50", root)
    assert task.class_names == ["dog", "rooster", "pig"] and [f.name for f in task.folds] == [
        f"fold{k}" for k in range(1, 6)]
    sources = {}
    for line in (root / "meta" / "esc50.csv").read_text().splitlines()[1:]:
        name, fold, target, _, _, src, _ = line.split(",")
        sources[f"audio/{name}"] = (int(fold), int(target), src)
    for k, fold in enumerate(task.folds, start=1):
        assert len(fold.test) == 9 and all(sources[ex.key][0] == k for ex in fold.test)
        assert len(fold.train) + len(fold.dev) == 36
        assert all(ex.label == sources[ex.key][1] for ex in fold.train + fold.dev + fold.test)
        train_src = {sources[ex.key][2] for ex in fold.train}
        dev_src = {sources[ex.key][2] for ex in fold.dev}
        assert dev_src and not train_src & dev_src  # takes of one recording never straddle train and dev
        assert {ex.label for ex in fold.dev} == {0, 1, 2}


def test_esc50_missing_csv_is_named(tmp_path):
    root = make_esc50(tmp_path)
    (root / "meta" / "esc50.csv").unlink()
    with pytest.raises(MaebenchError, match=re.escape(str(root / "meta" / "esc50.csv"))):
        check_layout("esc50", root)


# --------------------------------------------------------------------------------------------------- VoxCeleb1
def test_sid_split_file_and_dense_labels(tmp_path):
    root = tmp_path / "VoxCeleb1"
    lines = []
    for speaker in ("id10003", "id10001", "id10300"):
        sub = "test/wav" if speaker == "id10300" else "dev/wav"
        for n, code in enumerate((1, 1, 2, 3), start=1):
            write_wav(root / sub / speaker / "abcDEF12345" / f"{n:05d}.wav", seconds=0.05)
            lines.append(f"{code} {speaker}/abcDEF12345/{n:05d}.wav")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    task = load_task("sid", root)
    assert task.class_names == ["id10001", "id10003", "id10300"]  # ordered by int(id[2:]) - 10001
    fold = task.folds[0]
    assert (len(fold.train), len(fold.dev), len(fold.test)) == (6, 3, 3)
    assert all(task.class_names[ex.label] == ex.key.split("/")[0] for ex in fold.train + fold.dev + fold.test)
    assert next(ex for ex in fold.test if ex.label == 2).path.is_relative_to(root / "test" / "wav")
    assert task.train_crop_seconds == 8.0 and task.max_eval_seconds is None
    (root / "iden_split.txt").write_text("1 id10001/abc/00001.wav\n4 id10001/x.wav\n")
    with pytest.raises(MaebenchError, match="line 2"):
        load_task("sid", root)
    (root / "iden_split.txt").write_text("1 id19999/abcDEF12345/00001.wav\n")
    with pytest.raises(MaebenchError, match="id19999"):
        load_task("sid", root)


# ---------------------------------------------------------------------------------------------- reading audio
def tiny_task(examples: list[Example], root: Path) -> Task:
    from maebench.downstream.tasks.base import Fold

    return Task("ks2", root, "accuracy", ["a", "b"], False, [Fold("default", examples, [], examples)], None, None,
                probe_defaults("ks2", True))


def test_read_offset_and_num_samples_match_read_audio(tmp_path):
    path16, path44 = tmp_path / "a16.wav", tmp_path / "a44.wav"
    write_wav(path16, seconds=1.0)
    write_wav(path44, seconds=1.0, rate=44100)
    task = tiny_task([], tmp_path)
    for path in (path16, path44):
        whole = read_audio(path)
        window = task.read(Example(path, 0, offset=1234, num_samples=4000, key="w"))
        assert window.dtype == torch.float32 and window.shape == (4000,)
        torch.testing.assert_close(window, whole[1234:5234], atol=1e-6, rtol=0)
        tail = task.read(Example(path, 0, offset=15000, key="t"))
        torch.testing.assert_close(tail, whole[15000:], atol=1e-6, rtol=0)
        torch.testing.assert_close(task.read(Example(path, 0, key="x")), whole)
    with pytest.raises(MaebenchError, match=re.escape(str(path16))):
        task.read(Example(path16, 0, offset=15000, num_samples=4000))  # window past the end of the file


def test_unreadable_or_missing_test_file_is_an_error(tmp_path):
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    write_wav(good)
    bad.write_bytes(b"RIFF....WAVEjunkjunkjunk")
    task = tiny_task([Example(good, 0, key="good.wav"), Example(bad, 1, key="bad.wav")], tmp_path)
    with pytest.raises(MaebenchError, match=re.escape(str(bad))):
        [task.read(ex) for ex in task.folds[0].test]
    with pytest.raises(MaebenchError, match=re.escape(str(bad))):
        task.read(Example(bad, 1, offset=10, num_samples=10))
    missing = tmp_path / "gone.wav"
    with pytest.raises(MaebenchError, match=re.escape(str(missing))):
        task.read(Example(missing, 0, offset=10, num_samples=10))


def test_data_fingerprint_tracks_lists_and_files(tmp_path):
    root = make_ks2(tmp_path)
    first = load_task("ks2", root).data_fingerprint()
    assert load_task("ks2", root).data_fingerprint() == first
    victim = next((root / "yes").glob("*.wav"))
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_task("ks2", root).data_fingerprint()
    assert second != first
    (root / "validation_list.txt").write_text((root / "validation_list.txt").read_text().split("\n", 1)[1])
    assert load_task("ks2", root).data_fingerprint() != second  # an item moved from dev to train


def test_check_layout_counts_and_missing_audio(tmp_path):
    root = make_esc50(tmp_path)
    report = check_layout("esc50", root, deep=True)
    assert report["files"] == 45 and list(report["folds"]) == [f"fold{k}" for k in range(1, 6)]
    assert report["folds"]["fold2"]["test"] == {"total": 9, "per_class": {"dog": 3, "rooster": 3, "pig": 3}}
    victim = root / "audio" / "3-30-A-0.wav"
    victim.unlink()
    with pytest.raises(MaebenchError, match=re.escape(str(victim))):
        check_layout("esc50", root)


def test_holdout_is_deterministic_stratified_and_order_independent():
    items = [Example(Path(f"{i}.wav"), i % 3, key=f"k{i}") for i in range(60)]
    train, dev = holdout(items, 0.2, salt="s", stratum=lambda ex: ex.label)
    assert len(dev) == 12 and sorted(ex.label for ex in dev) == [0] * 4 + [1] * 4 + [2] * 4
    train2, dev2 = holdout(items[::-1], 0.2, salt="s", stratum=lambda ex: ex.label)
    assert {ex.key for ex in dev2} == {ex.key for ex in dev}
    assert {ex.key for ex in holdout(items, 0.2, salt="other", stratum=lambda ex: ex.label)[1]} != {
        ex.key for ex in dev}


def test_probe_defaults_cover_every_task():
    for name in (*TASKS, "as2m"):
        real, toy = probe_defaults(name, False), probe_defaults(name, True)
        assert set(real) == {"linear", "finetune", "logreg", "by_family"}
        assert set(real["by_family"]) <= {"ssast", "ssast_patch", "mae_ast"} and "ssast" in real["by_family"]
        assert real["by_family"]["ssast"]["finetune"]["source"].startswith("SSAST src/finetune/")
        assert real["linear"]["lr"] == 1e-4 and real["linear"]["projector_dim"] == 256
        assert toy["linear"]["max_steps"] < real["linear"]["max_steps"]
        assert real["finetune"]["source"] and real["logreg"]["Cs"]
    assert probe_defaults("sid", False)["linear"]["batch_size"] * probe_defaults("sid", False)["linear"][
        "grad_accum"] == 32
    assert (probe_defaults("er", False)["linear"]["batch_size"], probe_defaults("er", False)["linear"][
        "grad_accum"]) == (4, 8)
    assert probe_defaults("as20k", False)["finetune"]["loss"] == "bce"


def test_unknown_task_and_missing_root(tmp_path):
    for call in (lambda: datasets.load_task("ks3"), lambda: load_task("ks3", tmp_path),
                 lambda: datasets.check_layout("ks3"), lambda: datasets.build_toy("ks3", tmp_path / "ks3")):
        with pytest.raises(MaebenchError, match="unknown task 'ks3'; choose one of as20k, esc50, ks2"):
            call()
    assert not (tmp_path / "ks3").exists()
    with pytest.raises(MaebenchError, match="does not exist"):
        load_task("ks2", "/nonexistent/speech_commands")


# ------------------------------------------------------------------------- issue 14: bad inputs, one-line errors
def test_esc50_meta_missing_a_fold_is_named(tmp_path):
    """A meta file without fold 3 used to pass `data check` and end in a KeyError inside evaluation."""
    root = make_esc50(tmp_path)
    meta = root / "meta" / "esc50.csv"
    meta.write_text("".join(line for line in meta.read_text().splitlines(keepends=True) if ",3," not in line))
    with pytest.raises(MaebenchError) as excinfo:
        check_layout("esc50", root)
    message = str(excinfo.value)
    assert "\n" not in message and str(meta) in message and "no clips in fold 3" in message


@pytest.mark.parametrize("which", ["eval.json", "class_labels_indices.csv"])
def test_audioset_non_utf8_files_are_named(tmp_path, which):
    root = make_audioset(tmp_path)
    path = root / which
    path.write_bytes(path.read_bytes().replace(b"Speech", "Sp\u00e9ech".encode("latin-1"), 1)
                     if which.endswith(".csv") else b'{"data": [{"wav": "caf\xe9.wav", "labels": "/m/09x0r"}]}')
    with pytest.raises(MaebenchError) as excinfo:
        load_task("as20k", root)
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message and "not UTF-8" in message


@pytest.mark.parametrize("entry", [{"wav": 5, "labels": "/m/09x0r"}, {"wav": None, "labels": "/m/09x0r"},
                                   {"wav": "a.wav", "labels": None}, {"wav": "", "labels": "/m/09x0r"}])
def test_audioset_entries_with_wrong_types_are_named(tmp_path, entry):
    root = make_audioset(tmp_path)
    (root / "eval.json").write_text(json.dumps({"data": [entry]}))
    with pytest.raises(MaebenchError) as excinfo:
        load_task("as20k", root)
    message = str(excinfo.value)
    assert "\n" not in message and "entry 0" in message and str(root / "eval.json") in message


def test_non_finite_or_huge_audio_is_an_error_naming_the_file(tmp_path):
    """One NaN / Inf / absurdly loud file gave NaN features and a chance-level score without any error."""
    good = tmp_path / "good.wav"
    write_wav(good)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf), ("loud.wav", 1e20)):
        bad = tmp_path / name
        wav = np.random.default_rng(0).uniform(-0.5, 0.5, 1600).astype(np.float32)
        wav[800] = value
        sf.write(str(bad), wav, 16000, subtype="FLOAT")
        with pytest.raises(MaebenchError) as excinfo:
            read_audio(bad)
        assert str(bad) in str(excinfo.value) and "\n" not in str(excinfo.value)
        task = tiny_task([Example(good, 0, key="good.wav"), Example(bad, 1, key=name)], tmp_path)
        with pytest.raises(MaebenchError, match=re.escape(str(bad))):  # the 16 kHz window reader too
            task.read(Example(bad, 1, offset=10, num_samples=1000))
    wav = np.full(1600, 0.99, dtype=np.float32)  # loud but real audio passes
    sf.write(str(tmp_path / "ok.wav"), wav, 16000, subtype="FLOAT")
    assert float(read_audio(tmp_path / "ok.wav").max()) == pytest.approx(0.99)


def test_data_check_deep_lists_non_finite_audio(tmp_path):
    root = make_esc50(tmp_path)
    check_layout("esc50", root, deep=True)
    victims = sorted(root.glob("audio/2-*-A-*.wav"))[:2]
    for victim, value in zip(victims, (np.nan, 1e20), strict=True):
        data, rate = sf.read(str(victim), dtype="float32")
        data[3] = value
        sf.write(str(victim), data, rate, subtype="FLOAT")
    check_layout("esc50", root)  # the plain check only looks for the files
    with pytest.raises(MaebenchError) as excinfo:
        check_layout("esc50", root, deep=True)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("2 bad audio file(s)")
    assert f"{victims[0]} (NaN/Inf samples)" in message and f"{victims[1]} (amplitude 1e+20" in message
