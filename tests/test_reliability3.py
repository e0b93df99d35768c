"""Reliability, round 3 (issue 21): the pipeline, HEAR tasks, compare and the cache under bad input, kills and faults.

Each test pins one item of the issue (named in its docstring): silently wrong or lost work, pickled code, and
one-line errors (MaebenchError naming the file and what to do) instead of tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import one_line_error, write_tone_clips

from maebench.cli import main
from maebench.errors import MaebenchError

PRETRAIN_ONLY = """\
pipeline: 1
description: one tiny pretraining, nothing else
pretrain:
  m:
    data: {data}
    set: [model.name=mae_ast_patch, "model.overrides={{depth: 1, decoder_depth: 1, dim: 32, num_heads: 2,
          ffn_dim: 64}}", train.batch_size=2, train.log_every=5, train.ckpt_every=5, train.max_steps={steps},
          data.clip_seconds=0.5, data.num_workers=0]
compare: false
report: false
"""


def pretrain_recipe(tmp_path: Path, steps: int = 60) -> Path:
    data = write_tone_clips(tmp_path / "clips", count=8)
    path = tmp_path / "pretrain_only.yaml"
    path.write_text(PRETRAIN_ONLY.format(data=data, steps=steps))
    return path


def run_command(recipe: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "maebench", "run", str(recipe), "--run-dir", str(run_dir)]


def wait_for_trainer(run_dir: Path, parent: subprocess.Popen) -> int:
    """The pid of the pretraining child, once it holds its run directory's lock (written by the trainer)."""
    lock = run_dir / "pretrain" / "m" / ".lock"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and parent.poll() is None:
        text = lock.read_text().split() if lock.exists() else []
        if text and int(text[0]) != parent.pid:
            return int(text[0])
        time.sleep(0.02)
    raise AssertionError(f"the pretraining child never started: {parent.stderr.read().decode()}")


def gone(pid: int, seconds: float) -> bool:
    """Whether process `pid` has exited (or is a zombie) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_item1_a_killed_run_takes_its_pretraining_child_with_it_and_a_rerun_succeeds(tmp_path, sig):
    """Item 1: `kill PID` / SIGKILL of `maebench run` leaves no orphan training on; the re-run finishes."""
    recipe, run_dir = pretrain_recipe(tmp_path), tmp_path / "run"
    parent = subprocess.Popen(run_command(recipe, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    child = wait_for_trainer(run_dir, parent)
    os.kill(parent.pid, sig)
    parent.wait(timeout=60)
    assert gone(child, 20), "the pretraining child outlived its parent"
    final = run_dir / "pretrain" / "m" / "checkpoints" / "step_00000060"
    assert not final.exists()  # it stopped with its parent, not after training to the end as an orphan
    rerun = subprocess.run(run_command(recipe, run_dir), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert stages["pretrain/m"]["status"] == "done" and final.exists()


def test_item2_a_second_run_on_the_same_directory_is_refused_naming_the_first(tmp_path, capsys):
    """Item 2: while one `maebench run` works in RUN, a second is refused (exit 2, the first's pid) and writes
    nothing into RUN's manifest."""
    recipe, run_dir = pretrain_recipe(tmp_path), tmp_path / "run"
    first = subprocess.Popen(run_command(recipe, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_trainer(run_dir, first)
        before = (run_dir / "manifest.json").read_text()
        assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"in use by another maebench run (pid {first.pid}" in err and "Traceback" not in err
        assert (run_dir / "manifest.json").read_text() == before
    finally:
        first.kill()
        first.wait()


def tiny_upstream(seed: int = 0):
    import torch

    from maebench.upstream import registry

    torch.manual_seed(seed)
    return registry.preset("mae_ast_patch:tiny", depth=1, decoder_depth=1)


def hand_result(directory: Path, upstream: dict, task: str = "ks2", score: float = 70.0) -> Path:
    """A results.json as `maebench eval` writes it (the fields compare reads), written out here."""
    directory.mkdir(parents=True)
    record = {"maebench_results": 1, "task": task, "metric": "accuracy", "score": score, "std": 0.0,
              "upstream": {"family": "mae_ast", "config_hash": "c", **upstream}, "probe": {"name": "linear"},
              "data": {"root": None, "toy": True}, "created": "2026-01-01T00:00:00"}
    (directory / "results.json").write_text(json.dumps(record))
    return directory / "results.json"


def test_item3_compare_does_not_pass_off_an_older_checkpoints_result_as_the_run(tmp_path, monkeypatch, capsys):
    """Item 3: a result of RUN's step-1 checkpoint is not RUN's score once RUN has trained on: compare evaluates
    RUN again (matched by the recorded weights' fingerprint, not the name); without --task it says why it shows
    nothing."""
    from helpers import save_in_run

    import maebench.downstream.evaluate as evaluate_module
    from maebench.upstream.registry import fingerprint

    run = tmp_path / "run"
    old = tiny_upstream(0)
    step1 = save_in_run(old, run, 1)
    hand_result(tmp_path / "results" / "old", {"name": str(run), "path": str(step1), "fingerprint": fingerprint(old)})
    calls = []

    def recording_evaluate(task, spec, *, out_dir, probe, **_):
        calls.append((task, spec))
        return {"results_path": str(hand_result(Path(out_dir) / "new", {"name": spec, "fingerprint": "x"}, task,
                                                score=80.0))}

    monkeypatch.setattr(evaluate_module, "evaluate", recording_evaluate)
    args = ["compare", str(tmp_path / "results"), "--upstream", str(run), "--no-png"]
    # still the same weights: the result is RUN's, nothing to evaluate
    assert main([*args, "--task", "ks2", "--out", str(tmp_path / "c1")]) == 0 and calls == []
    save_in_run(tiny_upstream(1), run, 2)  # RUN trained on: its newest checkpoint has other weights
    assert main([*args, "--task", "ks2", "--out", str(tmp_path / "c2")]) == 0
    assert calls == [("ks2", str(run))]
    assert "80.0" in (tmp_path / "c2" / "compare.md").read_text()
    assert "70.0" not in (tmp_path / "c2" / "compare.md").read_text()
    capsys.readouterr()
    assert main(args) == 2  # item 17: the results exist but are filtered out; not "no results.json found"
    err = capsys.readouterr().err
    assert "no results.json found" not in err and "none of the 1 results.json" in err and "--task" in err


@pytest.fixture(scope="module")
def toy_ks2(tmp_path_factory) -> Path:
    from maebench.downstream.datasets import build_toy

    return build_toy("ks2", tmp_path_factory.mktemp("ks2"), speech_backend="procedural", size="small")


NAN_HEAR_MODULE = '''
import torch

class Model(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = timestamp_embedding_size = 4

def load_model(model_file_path="", **kwargs):
    return Model()

def get_scene_embeddings(audio, model):
    out = audio[:, :4].clone()
    out[:, 0] = float("nan")  # a broken module: one NaN dimension
    return out

def get_timestamp_embeddings(audio, model):
    return get_scene_embeddings(audio, model)[:, None], torch.zeros(audio.shape[0], 1)
'''


def test_item4_a_nan_weight_is_refused_at_load(tmp_path, capsys):
    """Item 4: a checkpoint with a NaN weight is a one-line error naming the file and the weight (not features a
    probe scores at chance)."""
    from safetensors.torch import load_file, save_file

    from maebench.upstream import load, save_upstream

    directory = save_upstream(tiny_upstream(), tmp_path / "nan")
    tensors = load_file(directory / "model.safetensors")
    name = sorted(k for k, v in tensors.items() if v.dtype.is_floating_point and v.ndim == 2)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(MaebenchError) as excinfo:
        load(directory)
    one_line_error(excinfo, str(directory / "model.safetensors"), name, "NaN")
    assert main(["eval", "--task", "ks2", "--upstream", str(directory), "--out", str(tmp_path / "out")]) == 2
    assert not list((tmp_path / "out").rglob("results.json")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("probe", ["linear", "logreg"])
def test_item4_nan_features_are_an_error_naming_the_upstream_and_no_result_is_written(tmp_path, monkeypatch,
                                                                                      toy_ks2, probe):
    """Item 4: a foreign module returning NaN: no chance-level score in results.json (linear), no scikit-learn
    traceback (logreg); a one-line error naming the upstream, and nothing written."""
    from maebench.downstream.evaluate import evaluate

    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "nan_hear_module.py").write_text(NAN_HEAR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    with pytest.raises(MaebenchError) as excinfo:
        evaluate("ks2", "hear:nan_hear_module", data_root=toy_ks2, probe=probe, out_dir=tmp_path / "out", quiet=True,
                 overrides={"max_steps": "20"} if probe == "linear" else {"Cs": "[1.0]", "max_iter": "50"})
    one_line_error(excinfo, "hear:nan_hear_module", "NaN")
    assert not list(tmp_path.rglob("results.json")) and not list((tmp_path / "cache").rglob("features.npy"))


def test_item5_an_out_path_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Item 5: `--out FILE` is refused at once (one line, naming it), not after the whole evaluation ran."""
    import maebench.downstream.evaluate as evaluate_module

    out = tmp_path / "out.txt"
    out.write_text("mine\n")
    loads = []
    monkeypatch.setattr(evaluate_module, "resolve_upstream", lambda spec: loads.append(spec))  # must not be reached
    for target in (out, out / "sub"):
        with pytest.raises(MaebenchError) as excinfo:
            evaluate_module.evaluate("ks2", "mae_ast_patch:tiny", out_dir=target, quiet=True)
        one_line_error(excinfo, str(target), "file", "--out")
    assert loads == [] and out.read_text() == "mine\n"


def write_hear_task(folder: Path, *, metadata: object = None, vocabulary: bytes | None = None,
                    splits: dict[str, dict] | None = None) -> Path:
    """A small HEAR scene task in hear-preprocess's layout (written out here), with parts replaced as given."""
    from helpers import speechlike, write_wav

    folder.mkdir(parents=True)
    meta = {"task_name": "tiny", "version": "1", "embedding_type": "scene", "prediction_type": "multiclass",
            "split_mode": "trainvaltest", "sample_duration": 0.5, "evaluation": ["top1_acc"]}
    (folder / "task_metadata.json").write_text(json.dumps(meta if metadata is None else metadata))
    (folder / "labelvocabulary.csv").write_bytes(vocabulary or b"idx,label\n0,dog\n1,cat\n")
    default = {split: {f"{split}{i}.wav": [("dog", "cat")[i % 2]] for i in range(4)}
               for split in ("train", "valid", "test")}
    for split, labels in (splits or default).items():
        (folder / f"{split}.json").write_text(json.dumps(labels))
        for i, name in enumerate(default[split]):
            write_wav(folder / "16000" / split / name, speechlike(8000, seed=i))
    return folder


def test_item5_a_hear_task_name_with_a_slash_is_refused_up_front(tmp_path):
    """Item 5: task_name "a/b" would end the evaluation in FileNotFoundError writing results: refused at load."""
    from maebench.downstream.datasets import load_task

    folder = write_hear_task(tmp_path / "task", metadata={
        "task_name": "a/b", "embedding_type": "scene", "prediction_type": "multiclass",
        "split_mode": "trainvaltest", "evaluation": ["top1_acc"]})
    with pytest.raises(MaebenchError) as excinfo:
        load_task(f"hear:{folder}")
    one_line_error(excinfo, str(folder / "task_metadata.json"), "'a/b'")


def test_item6_bench_data_rewrites_clips_of_another_length(tmp_path):
    """Item 6: clips left in --dir by a run with another --seconds are rewritten, not measured under the new label."""
    import soundfile

    from maebench.commands.bench_data import write_clips

    first = write_clips(tmp_path, "wav16k", 2, 1.0)
    assert [soundfile.info(str(p)).frames for p in first] == [16000, 16000]
    second = write_clips(tmp_path, "wav16k", 2, 0.5)
    assert second == first and [soundfile.info(str(p)).frames for p in second] == [8000, 8000]
    first[0].write_bytes(b"not audio")
    assert soundfile.info(str(write_clips(tmp_path, "wav16k", 2, 0.5)[0])).frames == 8000


HEAR_PIPELINE = """\
pipeline: 1
evals:
  tasks: ["hear:{task}"]
  probes: [logreg]
  upstreams: ["{upstream}"]
  set: {{logreg: {{Cs: [1.0], max_iter: 50}}}}
compare: false
report: false
"""


def test_item7_eval_data_leaves_hear_stages_alone(tmp_path, monkeypatch):
    """Item 7: with --eval-data ROOT a hear:PATH stage still reads PATH (not ROOT/hear:PATH) and runs."""
    from maebench.pipeline import Runner, load_pipeline
    from maebench.upstream import save_upstream

    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    task = write_hear_task(tmp_path / "task")
    upstream = save_upstream(tiny_upstream(), tmp_path / "up")
    recipe = tmp_path / "hear.yaml"
    recipe.write_text(HEAR_PIPELINE.format(task=task, upstream=upstream))
    (tmp_path / "root").mkdir()
    parsed, stages, path = load_pipeline(recipe, eval_data=str(tmp_path / "root"))
    runner = Runner(parsed, stages, tmp_path / "run", path, quiet=True)
    assert runner.run() == 0, json.loads((tmp_path / "run" / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["../../outside.wav", "/etc/outside.wav", ".."])
def test_item8_hear_split_files_name_only_files_of_their_audio_folder(tmp_path, capsys, name):
    """Item 8: a split file naming ../.. or an absolute path is refused (by eval and by `data check --deep`);
    nothing outside the task's audio folder is read."""
    from helpers import speechlike, write_wav

    from maebench.downstream.datasets import load_task

    write_wav(tmp_path / "outside.wav", speechlike(8000))  # what ../../outside.wav reaches from 16000/train/
    default = {split: {f"{split}{i}.wav": [("dog", "cat")[i % 2]] for i in range(4)}
               for split in ("train", "valid", "test")}
    default["train"][name] = ["dog"]
    folder = write_hear_task(tmp_path / "task", splits=default)
    with pytest.raises(MaebenchError) as excinfo:
        load_task(f"hear:{folder}")
    one_line_error(excinfo, str(folder / "train.json"), repr(name))
    assert main(["data", "check", "--task", f"hear:{folder}", "--deep"]) == 2
    assert "layout OK" not in capsys.readouterr().out


class PickledCode:
    """Pickles as a call of os.system: loading the file with weights_only=False runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_item9_an_s3prl_checkpoint_with_pickled_code_is_refused_before_s3prl_loads_it(tmp_path):
    """Item 9: `s3prl:NAME:FILE` reads FILE through maebench's allow-list first; pickled code never runs."""
    pytest.importorskip("s3prl", reason="install the s3prl extra: pip install 'maebench[s3prl]'")
    import torch
    from helpers import torchaudio_restored

    from maebench.upstream import load

    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"cfg": PickledCode(f"touch {marker}"), "model": {"w": torch.zeros(2)}}, checkpoint)
    with torchaudio_restored(), pytest.raises(MaebenchError) as excinfo:
        load(f"s3prl:mae_ast_local:{checkpoint}")
    one_line_error(excinfo, str(checkpoint), "s3prl:mae_ast_local", "pickled code")
    assert not marker.exists()


EVAL_ONLY = """\
pipeline: {pipeline}
evals:
  tasks: [ks2]
  probes: [logreg]
  upstreams: [mae_ast_patch:tiny]
{extra}compare: false
report: false
"""


def eval_recipe(tmp_path: Path, extra: str = "", pipeline: object = 1) -> Path:
    path = tmp_path / "evals.yaml"
    path.write_text(EVAL_ONLY.format(extra=extra, pipeline=pipeline))
    return path


@pytest.mark.parametrize("content", [b"[]", b'{"maebench_pipeline": 1, "stages": []}',
                                     b'{"maebench_pipeline": 1, "recipe_hash": "x", "stages": {"eval/a": "done"}}',
                                     b'{"maebench_pipeline": 1, "stages": {}, "recipe": "\xff\xfe"}', b"7"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_item10_a_corrupt_or_foreign_manifest_is_a_one_line_error(tmp_path, capsys, content, dry_run):
    """Item 10: a hand-edited, non-UTF-8 or list-shaped manifest.json (also a user folder's own) is one line
    naming it, dry run included; the file is left as it was."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_bytes(content)
    code = main(["run", str(eval_recipe(tmp_path)), "--run-dir", str(run_dir), *(["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    assert code == 2 and str(run_dir / "manifest.json") in err and err.count("\n") == 1, err
    assert (run_dir / "manifest.json").read_bytes() == content


@pytest.mark.parametrize("extra, needle", [
    ("  probe_seeds: {logreg: many}\n", "evals.probe_seeds.logreg"),
    ("  gpu_hours: {logreg: lots}\n", "evals.gpu_hours.logreg"),
    ("  set: {logreg: 5}\n", "evals.set.logreg"),
])
def test_item11_recipe_values_of_the_wrong_type_are_refused_when_read(tmp_path, capsys, extra, needle):
    """Item 11: checked when the recipe is read (--dry-run too), not a traceback mid-run."""
    recipe = eval_recipe(tmp_path, extra)
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(recipe) in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_item17_an_unknown_pipeline_format_is_refused(tmp_path, capsys):
    """Item 17: `pipeline: 2` is not read as format 1."""
    assert main(["run", str(eval_recipe(tmp_path, pipeline=2)), "--dry-run"]) == 2
    assert "pipeline: 2" in capsys.readouterr().err


def test_item14_compare_skips_a_results_file_of_wrong_types_naming_it(tmp_path, capsys):
    """Item 14: wrong types in upstream.path / protocol.fields / protocol.settings_for, and an unknown format
    (maebench_results: 99), are skipped with their name while the good results make the table; a FIFO named
    results.json is not opened (it would hang)."""
    good = hand_result(tmp_path / "res" / "good", {"name": "mae_ast_patch:tiny", "path": None})
    bad = []
    for name, change in (("path", {"upstream": {"name": "x", "path": 5}}),
                         ("fields", {"protocol": {"fields": ["a"]}}),
                         ("settings_for", {"protocol": {"settings_for": ["a"], "fields": {}}}),
                         ("format", {"maebench_results": 99})):
        path = hand_result(tmp_path / "res" / name, {"name": f"u-{name}"})
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, **change}))
        bad.append(path)
    (tmp_path / "res" / "fifo").mkdir()
    os.mkfifo(tmp_path / "res" / "fifo" / "results.json")
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "res"), "--out", str(out), "--no-png"]) == 0
    err = capsys.readouterr().err
    assert all(str(path) in err for path in bad), err
    assert "upstream.path" in err and "protocol.fields" in err and "protocol.settings_for" in err and "99" in err
    table = (out / "compare.md").read_text()
    assert "mae_ast_patch:tiny" in table and "u-path" not in table and str(good) not in err


def test_item12_output_paths_that_are_files_or_folders_are_one_line_errors(tmp_path, capsys):
    """Item 12: `run --run-dir FILE`, `data manifest -o DIR`, `-o FILE/x.tsv`, `convert X FILE/sub`."""
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    clips = write_tone_clips(tmp_path / "clips", count=2)
    cases = [
        (["run", str(eval_recipe(tmp_path)), "--run-dir", str(a_file)], str(a_file)),
        (["data", "manifest", str(clips), "-o", str(clips)], str(clips)),
        (["data", "manifest", str(clips), "-o", str(a_file / "x.tsv")], str(a_file)),
        (["convert", "mae_ast_patch:tiny", str(a_file / "sub")], str(a_file)),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert a_file.read_text() == "mine\n"


def test_item15_a_cache_under_a_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """Item 15: MAEBENCH_CACHE under a file: one line naming it, not a raw OSError."""
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "a_file" / "cache"))
    assert main(["eval", "--task", "ks2", "--upstream", "mae_ast_patch:tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a_file" / "cache") in err and "MAEBENCH_CACHE" in err and err.count("\n") == 1


FULL_AND_READ_ONLY = r"""
set -e
mount -t tmpfs -o size=24m tmpfs "$MNT"
mkdir "$MNT/ro_cache"
mount -t tmpfs -o ro,size=64k tmpfs "$MNT/ro_cache"
cd "$WORK"
MAEBENCH_CACHE="$MNT/ro_cache" $PY -m maebench pretrain --data "$CLIPS" --max-steps 2 --batch-size 2 \
    --run-dir "$MNT/run" --set "$TINY" --quiet > ro.out 2> ro.err && echo 0 > ro.rc || echo $? > ro.rc
test -e "$MNT/run/checkpoints" && echo trained > ro.trained || true
$PY -m maebench convert mae_ast_patch:tiny "$MNT/ck" --set depth=1 > /dev/null
sha256sum "$MNT/ck/model.safetensors" "$MNT/ck/config.json" > before.sha
head -c 40000000 /dev/zero > "$MNT/filler" 2> /dev/null || true
$PY -m maebench convert mae_ast_patch:tiny "$MNT/ck" --set depth=2 --overwrite > full.out 2> full.err \
    && echo 0 > full.rc || echo $? > full.rc
sha256sum "$MNT/ck/model.safetensors" "$MNT/ck/config.json" > after.sha
ls -a "$MNT" > listing.txt
"""


def test_item15_a_read_only_cache_is_refused_up_front_and_a_full_disk_is_one_line_with_the_old_data_intact(tmp_path):
    """Item 15: with a read-only cache `pretrain` refuses before training (not after saving); a full disk while
    replacing a checkpoint is a one-line error and the old checkpoint is intact. Run in a private mount namespace
    (tmpfs mounts, no trace outside); skipped where namespaces or mounts are not allowed."""
    from helpers import TINY_MODEL

    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespaces here (needs root or user namespaces)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "MNT": str(mnt), "WORK": str(tmp_path), "PY": sys.executable, "TINY": TINY_MODEL,
           "CLIPS": str(write_tone_clips(tmp_path / "clips", count=4)), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["unshare", "-m", "sh", "-c", FULL_AND_READ_ONLY], env=env, capture_output=True,
                          text=True, timeout=300)
    if "mount:" in done.stderr and not (tmp_path / "ro.rc").exists():
        pytest.skip(f"mounting a tmpfs is not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    ro_err = (tmp_path / "ro.err").read_text()
    assert (tmp_path / "ro.rc").read_text().strip() == "2", ro_err
    assert "ro_cache" in ro_err and "not writable" in ro_err and ro_err.count("\n") == 1, ro_err
    assert not (tmp_path / "ro.trained").exists()  # refused before any training
    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", full_err
    assert "disk is full" in full_err and full_err.count("\n") == 1, full_err
    before = [line.split()[0] for line in (tmp_path / "before.sha").read_text().splitlines()]
    after = [line.split()[0] for line in (tmp_path / "after.sha").read_text().splitlines()]
    assert before == after  # the old checkpoint, byte for byte
    leftovers = [n for n in (tmp_path / "listing.txt").read_text().split() if n.startswith(".ck")]
    assert leftovers == []  # no half-written staging folder left behind


def test_item18_checkpoint_weights_follow_the_umask_like_the_config(tmp_path):
    """Item 18: model.safetensors gets the same permissions as config.json (0644 under umask 022), so colleagues
    sharing a run directory can read the weights."""
    from maebench.upstream import save_upstream

    previous = os.umask(0o022)
    try:
        directory = save_upstream(tiny_upstream(), tmp_path / "ck")
    finally:
        os.umask(previous)
    modes = {name: (directory / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}


GOOD_META = {"task_name": "tiny", "embedding_type": "scene", "prediction_type": "multiclass",
             "split_mode": "trainvaltest", "evaluation": ["top1_acc"]}


@pytest.mark.parametrize("metadata, vocabulary, needle", [
    (5, None, "task_metadata.json"),
    (None, None, "task_metadata.json"),  # JSON null (written as the literal below)
    ({**GOOD_META, "splits": 5}, None, "splits"),
    ({**GOOD_META, "evaluation": {}}, None, "evaluation"),
    (GOOD_META, b"idx,label\n0,chien\n1,chat\xe9\n", "labelvocabulary.csv"),
    (GOOD_META, b"idx,label\n0,dog\n0,cat\n1,bird\n", "idx"),
])
def test_item13_a_malformed_hear_task_is_a_one_line_error_naming_its_file(tmp_path, capsys, metadata, vocabulary,
                                                                          needle):
    """Item 13: malformed task_metadata.json (5, null, splits: 5, evaluation: {}), a non-UTF-8 vocabulary and a
    duplicate idx (which silently dropped a class) are one-line errors naming the file, in eval and data check."""
    from maebench.downstream.datasets import load_task

    folder = write_hear_task(tmp_path / "task", metadata=GOOD_META, vocabulary=vocabulary)
    if metadata is not GOOD_META:
        (folder / "task_metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(MaebenchError) as excinfo:
        load_task(f"hear:{folder}")
    one_line_error(excinfo, str(folder), needle)
    assert main(["data", "check", "--task", f"hear:{folder}"]) == 2
    assert "layout OK" not in capsys.readouterr().out


def test_item13_an_empty_test_split_is_refused_by_data_check_and_eval(tmp_path, capsys):
    """Item 13: test.json = {} : `data check` said OK and eval raised KeyError; now both name the split."""
    from maebench.downstream.datasets import load_task

    default = {split: {f"{split}{i}.wav": [("dog", "cat")[i % 2]] for i in range(4)} for split in ("train", "valid")}
    folder = write_hear_task(tmp_path / "task", splits={**default, "test": {}})
    with pytest.raises(MaebenchError) as excinfo:
        load_task(f"hear:{folder}")
    one_line_error(excinfo, "test", "no examples")
    assert main(["data", "check", "--task", f"hear:{folder}"]) == 2
    assert "layout OK" not in capsys.readouterr().out


def non_utf8_copy(toy: Path, destination: Path) -> Path:
    """A copy of the toy KS2 layout with one training clip renamed to a Latin-1 (not UTF-8) file name."""
    import shutil

    shutil.copytree(toy, destination)
    listed = set()
    for name in ("validation_list.txt", "testing_list.txt"):
        listed |= set((destination / name).read_text().split())
    clip = next(p for p in sorted(destination.rglob("*.wav")) if p.relative_to(destination).as_posix() not in listed
                and p.parent.name != "_background_noise_")
    os.rename(os.fsencode(clip), os.fsencode(clip.parent) + b"/caf\xe9_" + os.fsencode(clip.name))
    return destination


def test_item16_a_file_name_that_is_not_utf8(tmp_path, toy_ks2, capsys):
    """Item 16: `data check` and `eval` agree (one line naming the file, before any extraction); `data manifest`
    leaves it out saying why, not calling it "unreadable"."""
    root = non_utf8_copy(toy_ks2, tmp_path / "ks2")
    assert main(["data", "check", "--task", "ks2", "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "caf\\xe9_" in err and "not valid UTF-8" in err and err.count("\n") == 1, err
    assert main(["eval", "--task", "ks2", "--data", str(root), "--upstream", "mae_ast_patch:tiny",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "caf\\xe9_" in err and "not valid UTF-8" in err and err.count("\n") == 1, err
    assert main(["data", "manifest", str(root), "-o", str(tmp_path / "m.tsv")]) == 0
    out = capsys.readouterr().out
    assert "not valid UTF-8" in out and "caf\\xe9_" in out and "unreadable" not in out
    assert b"caf\xe9" not in (tmp_path / "m.tsv").read_bytes()


def test_item17_a_relative_hear_module_name_is_a_one_line_error():
    """Item 17: `--upstream hear:.relative` (importlib's TypeError before)."""
    from maebench.upstream import load

    with pytest.raises(MaebenchError) as excinfo:
        load("hear:.relative")
    one_line_error(excinfo, "'.relative'", "module name")


def test_item17_a_manifest_length_must_be_ascii_digits(tmp_path):
    """Item 17: a .tsv length of "²" passes str.isdigit() and then failed in int()."""
    from maebench.manifest import read_manifest

    clips = write_tone_clips(tmp_path / "clips", count=1)
    tsv = tmp_path / "m.tsv"
    tsv.write_text(f"{clips}\nclip_000.wav\t\u00b2\n", encoding="utf-8")
    with pytest.raises(MaebenchError) as excinfo:
        read_manifest(tsv)
    one_line_error(excinfo, str(tsv), "line 2")


def test_item17_a_dry_run_piped_into_head_is_not_a_traceback(tmp_path):
    """Item 17: `maebench run demo --dry-run | head`: the reader is gone before the plan is written."""
    reader_gone = subprocess.Popen([sys.executable, "-m", "maebench", "run", "demo", "--dry-run", "--run-dir",
                                    str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader_gone.stdout.close()  # as `head` exiting: the plan's write meets a closed pipe
    err = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


BUDGET = """\
pipeline: 1
pretrain:
  m:
    data: {data}
    set: [model.name=mae_ast_patch, "model.overrides={{depth: 1, decoder_depth: 1, dim: 32, num_heads: 2,
          ffn_dim: 64}}", train.batch_size=2, train.log_every=1, train.ckpt_every=2, data.clip_seconds=0.5,
          data.num_workers=0]
    budget_seconds: 0.001
    calibration_steps: 2
compare: false
report: false
"""


def test_item17_a_fresh_budgeted_run_does_not_claim_a_resume(tmp_path, capfd):
    """Item 17: the first run of a pipeline with a time budget printed "--resume: ... no checkpoint yet" (nobody
    passed --resume); a fresh run says nothing of the kind."""
    from maebench.pipeline import Runner, load_pipeline

    recipe = tmp_path / "budget.yaml"
    recipe.write_text(BUDGET.format(data=write_tone_clips(tmp_path / "clips", count=4)))
    parsed, stages, path = load_pipeline(recipe)
    assert Runner(parsed, stages, tmp_path / "run", path, quiet=True).run() == 0
    captured = capfd.readouterr()
    logs = "".join(path.read_text() for path in (tmp_path / "run").rglob("*.log"))  # the child's output
    assert "no checkpoint yet" not in captured.out + captured.err + logs
