"""What an adversarial user tried (issue 14): nothing the user made is lost, no result depends on machine load,
and misuse gives one-line errors. Each test failed before its fix.

Pretraining runs use the 2-layer, 32-wide MAE-AST of test_pretrain.py on 0.5 s clips (a second or two each).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import TINY_MODEL, one_line_error, save_in_run, write_tone_clips, write_wav

from maebench import run_checkpoint as ckpt
from maebench import trainer
from maebench.atomic import temp_sibling, write_text_atomic
from maebench.cli import main
from maebench.config import PretrainConfig, apply_overrides, to_yaml
from maebench.downstream import sounds
from maebench.errors import MaebenchError


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_tone_clips(tmp_path_factory.mktemp("clips"), count=12)


def tiny_config(data: Path, run_dir: Path, *extra: str) -> PretrainConfig:
    return apply_overrides(PretrainConfig(), [
        f"data.source={data}", "data.clip_seconds=0.5", "data.num_workers=0", "train.batch_size=4",
        "train.max_steps=4", "train.log_every=2", "train.ckpt_every=2", "train.device=cpu", "optim.lr=2e-3",
        "optim.warmup_steps=2", f"run_dir={run_dir}", TINY_MODEL, *extra,
    ])


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- 1. data toy --overwrite


def test_data_toy_overwrite_replaces_only_its_own_builds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(sounds.SPEECH_BACKEND_ENV, "procedural")
    out = tmp_path / "data"
    user = out / "sid"
    write_wav(user / "dev/wav/id10001/my_video/00001.wav", torch.zeros(1600))
    (user / "iden_split.txt").write_text("1 id10001/my_video/00001.wav\n")
    mine = tree(user)
    for flags in ([], ["--overwrite"]):
        assert main(["data", "toy", "--task", "sid", "-o", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(user) in err
        assert tree(user) == mine  # the user's dataset is untouched, whatever the flags
    assert "never replaced, even with --overwrite" in err

    # a toy build of ours is rebuilt with --overwrite; a kill -9 leftover of a build is swept, a live one kept
    toy = out / "toy"
    assert main(["data", "toy", "--task", "sid", "-o", str(toy)]) == 0
    (toy / "sid" / "stale_extra.txt").write_text("from an older build")
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = toy / f".sid.tmp-{int(dead.stdout)}-{host}-0000abcd"
    live = toy / f".sid.tmp-{os.getpid()}-{host}-0000abce"
    for leftover in (killed, live):
        (leftover / "half").mkdir(parents=True)
    assert main(["data", "toy", "--task", "sid", "-o", str(toy), "--overwrite"]) == 0
    assert not (toy / "sid" / "stale_extra.txt").exists() and (toy / "sid" / ".maebench_toy.json").is_file()
    assert not killed.exists() and live.exists()
    assert sorted(p.name for p in toy.iterdir()) == sorted(["sid", live.name])


# -------------------------------------------------------------------------------------- 2, 3. run directory ownership


def test_pretrain_refuses_a_run_dir_holding_user_files(clips, tmp_path, monkeypatch, capsys):
    """`--run-dir .` in a folder with the user's config.yaml and metrics.jsonl: refused, even with --overwrite."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "config.yaml").write_text("model: resnet50\nlr: 0.1\n")
    (work / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.93}\n')
    (work / "train.py").write_text("print('mine')\n")
    mine = tree(work)
    monkeypatch.chdir(work)
    settings = ["--set", f"data.source={clips}", "--set", "data.clip_seconds=0.5", "--set", "data.num_workers=0",
                "--set", TINY_MODEL, "--set", "train.device=cpu", "--max-steps", "2", "--batch-size", "4", "--quiet"]
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main(["pretrain", "--run-dir", ".", *settings, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did not write (config.yaml, metrics.jsonl, train.py)" in err
        assert tree(work) == mine and sorted(p.name for p in work.iterdir()) == sorted(mine)


def test_a_run_killed_before_its_first_checkpoint_is_still_ours(clips, tmp_path):
    """Only what pretrain writes (resolved config.yaml, metrics records, staging leftovers): a normal fresh start."""
    run = tmp_path / "run"
    cfg = tiny_config(clips, run, "train.max_steps=2")
    (run / "checkpoints" / ".staging-12345").mkdir(parents=True)
    write_text_atomic(run / "config.yaml", to_yaml(cfg))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo')  # cut by the kill
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ours = temp_sibling(run / "config.yaml").name  # the name write_text_atomic gives it, with a dead writer's pid
    half_written = run / ours.replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-", 1)
    half_written.write_text("model: {name: mae_a")  # the kill hit write_text_atomic before its rename
    half_init = run / ".init.tmp-0badf00d"  # ... or the random init's save before its rename
    half_init.mkdir()
    (half_init / "model.safetensors").write_bytes(b"\0" * 10)
    result = trainer.train(cfg, quiet=True)
    assert (result.start_step, result.steps) == (0, 2)
    assert not half_written.exists() and not half_init.exists()  # swept as garbage, not refused as the user's
    assert (run / "init" / "config.json").is_file()


def test_second_pretrain_on_a_live_run_dir_is_refused_naming_the_holder(clips, tmp_path, capsys):
    run = tmp_path / "run"
    seen = {}
    real_step = trainer.Pretrainer.train_step

    def step_and_try_a_second_run(self):  # while the first run trains, a second one starts on the same directory
        if "error" not in seen:
            staging = run / "checkpoints" / f"{ckpt.STAGING_PREFIX}{os.getpid()}"
            staging.mkdir(parents=True)  # the live run's checkpoint being written
            with pytest.raises(MaebenchError) as excinfo:
                trainer.train(tiny_config(clips, run), quiet=True)
            seen["error"] = one_line_error(excinfo, f"run directory {run} is in use", f"pid {os.getpid()}")
            seen["staging kept"] = staging.is_dir()
            staging.rmdir()
        real_step(self)

    trainer.Pretrainer.train_step = step_and_try_a_second_run
    try:
        first = trainer.train(tiny_config(clips, run), quiet=True)
    finally:
        trainer.Pretrainer.train_step = real_step
    assert first.steps == 4 and seen["staging kept"]

    # released on exit: the same command runs again (nothing to do); a different config lists what differs
    assert trainer.train(tiny_config(clips, run), quiet=True).start_step == 4
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(tiny_config(clips, run, "optim.lr=1e-3", "train.log_every=1"), quiet=True)
    one_line_error(excinfo, "different configuration (optim.lr: 0.002 -> 0.001; see its config.yaml)")


def test_lock_of_a_killed_run_is_not_stale(tmp_path):
    """flock dies with its holder: after kill -9 the next run takes the lock; the refusal names the live pid."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from maebench.run_checkpoint import "
         "RunLock; RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MaebenchError) as excinfo:
            ckpt.RunLock(run)
        one_line_error(excinfo, f"pid {holder.pid} on {socket.gethostname()}", "wait for it to finish")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    ckpt.RunLock(run).release()


# -------------------------------------------------------------------------------------------- 8. CPU thread count


def test_cpu_threads_do_not_depend_on_machine_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    counts = set()
    for load in (0.0, 1.7, 64.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        counts.add(trainer.cpu_threads())
    assert counts == {cores}
    assert trainer.cpu_threads(saved=3) == 3  # a resumed run keeps its count
    assert trainer.cpu_threads(requested=2, saved=3) == 2  # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert trainer.cpu_threads(saved=3) == 1 and trainer.cpu_threads(requested=2) == 2
    with pytest.raises(MaebenchError, match="--threads 0"):
        trainer.cpu_threads(requested=0)


def test_thread_count_is_recorded_and_reused_on_resume(clips, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run, "train.max_steps=2"), quiet=True, threads=1)
    assert ckpt.load_trainer_state(run / "checkpoints/step_00000002")["cpu_threads"] == 1
    used = []
    real_step = trainer.Pretrainer.train_step
    monkeypatch.setattr(trainer.Pretrainer, "train_step", lambda self: (used.append(torch.get_num_threads()),
                                                                         real_step(self)))
    torch.set_num_threads(2)
    trainer.train(tiny_config(clips, run, "train.max_steps=3"), quiet=True, resume=True)
    assert used == [1]
    assert ckpt.load_trainer_state(run / "checkpoints/step_00000003")["cpu_threads"] == 1


# ------------------------------------------------------------------------------------------------ 9. one-line errors


def test_read_only_run_dir_is_a_one_line_error(clips, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run, "train.max_steps=2"), quiet=True)
    before = tree(run / "checkpoints")

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(trainer, "write_text_atomic", read_only)
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(tiny_config(clips, run, "train.max_steps=4"), quiet=True, resume=True)
    one_line_error(excinfo, f"cannot write to run directory {run}", "Permission denied")
    assert tree(run / "checkpoints") == before


def test_eval_on_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    argv = ["eval", "--task", "ks2", "--upstream", "mae_ast_patch:tiny", "--data", str(tmp_path / "nowhere"),
            "--out", str(tmp_path / "eval")]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is visible" in err
    assert main([*argv, "--device", "cuda:banana"]) == 2
    assert "not a torch device" in capsys.readouterr().err


def test_config_json_with_a_string_for_a_number(tmp_path):
    import maebench.upstream as upstream

    saved = upstream.save_upstream(upstream.load("mae_ast_patch:tiny", depth=1), tmp_path / "ckpt")
    meta = json.loads((saved / "config.json").read_text())
    meta["config"]["depth"] = "six"
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, str(saved / "config.json"), "depth must be int, got 'six'")
    meta["config"]["depth"], meta["config"]["mask_ratio"] = 1, "0.75"
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MaebenchError, match="mask_ratio must be float, got '0.75'"):
        upstream.load(saved)


# ------------------------------------------------------------------------------------------------------ 10. smaller


def test_manifest_leaves_out_names_a_tsv_cannot_hold(tmp_path, capsys):
    from maebench.manifest import read_manifest, write_manifest

    root = tmp_path / "audio"
    for name in ("good.wav", "tab\there.wav", "new\nline.wav", "carriage\r.wav"):
        write_wav(root / name, torch.zeros(800))
    out = tmp_path / "train.tsv"
    assert write_manifest(root, out, progress=False) == 1
    assert [item.path.name for item in read_manifest(out)] == ["good.wav"]
    printed = capsys.readouterr().out
    assert "left out 3 file(s)" in printed and "'tab\\there.wav'" in printed


def test_symlink_loops_list_each_real_file_once(tmp_path):
    from maebench.manifest import find_audio

    root = tmp_path / "audio"
    write_wav(root / "a.wav", torch.zeros(800))
    write_wav(root / "deep" / "b.wav", torch.zeros(800))
    (root / "sub").symlink_to(root, target_is_directory=True)  # sub -> .
    (root / "deep" / "up").symlink_to(root, target_is_directory=True)  # deep/up -> ..
    (root / "alias.wav").symlink_to(root / "a.wav")
    outside = tmp_path / "elsewhere"
    write_wav(outside / "c.wav", torch.zeros(800))
    (root / "more").symlink_to(outside, target_is_directory=True)  # a linked folder outside is still followed
    assert [item.path.relative_to(root).as_posix() for item in find_audio(root)] == ["a.wav", "deep/b.wav",
                                                                                      "more/c.wav"]


def test_files_follow_the_users_umask(tmp_path):
    import maebench.upstream as upstream

    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "results.txt", "x")
        saved = upstream.save_upstream(upstream.load("mae_ast_patch:tiny", depth=1), tmp_path / "ckpt")
        run = tmp_path / "run"
        save_in_run(upstream.load("mae_ast_patch:tiny", depth=1), run, 1)
    finally:
        os.umask(old)
    assert (tmp_path / "results.txt").stat().st_mode & 0o777 == 0o640
    assert saved.stat().st_mode & 0o777 == 0o750
    assert (saved / "config.json").stat().st_mode & 0o777 == 0o640
    assert (run / "checkpoints" / "step_00000001").stat().st_mode & 0o777 == 0o750


def test_bench_never_says_a_slower_model_is_faster(capsys):
    from maebench.commands import bench_pretrain

    rows = [{"label": "MAE-AST patch", "step_s": 1.0, "peak_bytes": 300},
            {"label": "SSAST patch two-pass", "step_s": 0.9, "peak_bytes": 600},
            {"label": "SSAST patch one-pass", "step_s": 2.5, "peak_bytes": 250}]
    bench_pretrain._print_footer(rows, gpu=None, peak=None, precision="fp32")
    out = capsys.readouterr().out
    assert "0.9x faster" not in out
    assert "vs SSAST patch two-pass: 1.1x slower, 2.0x less peak memory" in out
    assert "vs SSAST patch one-pass: 2.5x faster, 1.2x more peak memory" in out


def test_corpus_build_left_by_a_killed_process_is_swept(tmp_path):
    from maebench import atomic, toy_corpus

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / toy_corpus._folder_name(6)
    leftover = tmp_path / f".{final.name}.build-{dead.pid}-{atomic._host()}-dead"
    live = tmp_path / f".{final.name}.build-{os.getpid()}-{atomic._host()}-live"
    leftover.mkdir()
    live.mkdir()  # a concurrent builder in a live process: kept
    assert toy_corpus.ensure_toy_corpus(tmp_path, num_clips=6) == final
    assert not leftover.exists() and live.is_dir()
    assert len(list((final / "clips").glob("*.wav"))) == 6


# ---------------------------------------------------------------------------------------- 5. non-finite audio (eval)


def test_a_nan_file_in_an_evaluation_set_is_an_error_naming_it(tmp_path):
    """It used to give NaN features, a chance-level score, exit 0 and NaN in results.json."""
    from test_probes import SpectrumUpstream, make_task

    from maebench.downstream.probes import logreg_probe

    task = make_task(tmp_path / "data", per_class=(2, 1, 1))
    victim = task.folds[0].test[2].path
    wav, rate = sf.read(str(victim), dtype="float32")
    wav[100:110] = np.nan
    sf.write(str(victim), wav, rate, subtype="FLOAT")
    with pytest.raises(MaebenchError) as excinfo:
        logreg_probe(SpectrumUpstream(), task, task.folds[0], seed=0)
    one_line_error(excinfo, str(victim), "NaN/Inf")


# ------------------------------------------------------------------------------- 6. pretraining without good audio


def test_pretraining_on_unreadable_files_stops_instead_of_succeeding(tmp_path, capsys):
    """Every file unreadable used to 'succeed' (loss 0.0) and leave a checkpoint that became the latest run."""
    from maebench.paths import latest_pretrain_run

    data = tmp_path / "broken"
    data.mkdir()
    for i in range(6):
        (data / f"clip_{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * (i + 1))
    before = latest_pretrain_run()
    run = tmp_path / "run"
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(tiny_config(data, run, "train.max_steps=4"), quiet=True)
    one_line_error(excinfo, "no readable audio in steps 1-2", str(data / "clip_"), "stopped without saving")
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    assert latest_pretrain_run() == before
    assert main(["pretrain", "--run-dir", str(tmp_path / "run2"), "--set", f"data.source={data}", "--set",
                 "data.clip_seconds=0.5", "--set", "data.num_workers=0", "--set", TINY_MODEL, "--set",
                 "train.device=cpu", "--max-steps", "2", "--batch-size", "4", "--quiet"]) == 2
    assert "no readable audio" in capsys.readouterr().err


def test_a_file_that_makes_the_loss_non_finite_is_named_and_skipped_on_resume(tmp_path, monkeypatch):
    """A loud (but finite) file whose batch gives a NaN loss: the error names the batch's files, writes them to
    RUN/skip_files.txt, and the rerun leaves them out and trains to the end."""
    from maebench import distributed as ddp

    data = write_tone_clips(tmp_path / "clips", count=7)
    loud = write_wav(data / "loud.wav", (30 * np.sin(np.arange(12000) / 7)).astype(np.float32), subtype="FLOAT")
    real_forward = ddp.PretrainStep.forward

    def forward(self, wavs, lens):  # stands in for a model whose loss overflows on a file far too loud
        loss, stats = real_forward(self, wavs, lens)
        return (loss * float("nan") if bool((wavs.abs() > 10).any()) else loss), stats

    monkeypatch.setattr(ddp.PretrainStep, "forward", forward)
    run = tmp_path / "run"
    cfg = tiny_config(data, run, "train.max_steps=4")  # 8 clips, batches of 4: two batches an epoch
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(cfg, quiet=True)
    message = one_line_error(excinfo, str(loud), f"{run / 'skip_files.txt'}, which --resume leaves out",
                             "none was written yet")
    assert "It first happened at step " in message
    listed = [line for line in (run / "skip_files.txt").read_text().splitlines() if not line.startswith("#")]
    assert str(loud) in listed and len(listed) == 4  # the batch's four files
    result = trainer.train(cfg, quiet=True, resume=True)
    assert result.steps == 4 and all(np.isfinite(loss) for _, loss in result.losses)
    assert str(loud) in result.skipped and result.num_skipped == 4
    assert trainer.read_skip_files(run) == set(listed)


def test_absurdly_loud_pretraining_clips_are_skipped_like_nan_ones():
    from maebench.pretrain_data import checked_clip

    clip = torch.sin(torch.arange(2000) / 5.0)
    assert checked_clip(clip, (0, 0), "ok.wav", 400)[2] is None
    assert checked_clip(clip * 900, (0, 0), "loud-but-ok.wav", 400)[2] is None
    for bad in (clip * 1e20, torch.where(torch.arange(2000) == 7, float("nan"), clip)):
        wav, key, error = checked_clip(bad, (3, 1), "bad.wav", 400)
        assert (wav.numel(), key, error) == (0, (3, 1), "bad.wav")
