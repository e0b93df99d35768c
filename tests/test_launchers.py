"""`maebench run --launcher slurm` through real submitit: the tiny pipeline's stages as jobs of submitit's
LocalExecutor (real pickling, real job processes; pretraining as 2 CPU tasks joined with gloo from submitit's
environment), a killed job resubmitted by the next `maebench run`, a preempted job requeued and resumed exactly,
and the sbatch script submitit would write for the paper recipe.
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

submitit = pytest.importorskip("submitit", reason="submitit is the `cluster` extra: pip install -e '.[cluster]'")

from maebench import launchers, pipeline, slurm  # noqa: E402
from maebench import run_checkpoint as ckpt  # noqa: E402
from maebench.cli import main  # noqa: E402
from maebench.errors import MaebenchError  # noqa: E402

TINY = """\
pipeline: 1
description: a tiny pipeline on submitit's local executor
launcher: {{kind: slurm, cluster: local, gpus: 2, time_minutes: 10, eval_time_minutes: 10}}
pretrain:
  m:
    data: {data}
    set: [model.name=mae_ast_patch, "model.overrides={{depth: 1, decoder_depth: 1}}", train.batch_size=2,
          train.log_every=1, train.ckpt_every=2, train.max_steps=12, data.clip_seconds=0.5, data.num_workers=0]
    gpu_hours: 2.5
evals:
  tasks: [ks2]
  probes: [logreg]
  upstreams: [m]
  gpu_hours: {{logreg: 0.25}}
"""
FINAL = Path("pretrain/m/checkpoints/step_00000012/model.safetensors")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    path = root / "tiny.yaml"
    path.write_text(TINY.format(data=write_tone_clips(root / "clips", count=8)))
    return path


@pytest.fixture(scope="module")
def finished(recipe) -> Path:
    """The tiny pipeline run once, start to end, through submitit's local executor."""
    run_dir = recipe.parent / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_every_stage_runs_as_its_own_job_and_pretraining_as_two_gloo_ranks(finished, capsys):
    stages = json.loads((finished / "manifest.json").read_text())["stages"]
    assert [k for k, e in stages.items() if e["status"] == "done"] == ["pretrain/m", "eval/m/ks2/logreg",
                                                                       "compare", "report"]
    jobs = {stages[k]["job"]["id"] for k in ("pretrain/m", "eval/m/ks2/logreg")}
    assert len(jobs) == 2  # two jobs, each with its log in the submitit folder
    assert all(Path(stages[k]["job"]["stdout"]).exists() for k in ("pretrain/m", "eval/m/ks2/logreg"))
    assert stages["pretrain/m"]["job"]["tasks"] == 2
    state = ckpt.load_trainer_state(finished / "pretrain/m/checkpoints/step_00000012")
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # one process group of the job's two tasks
    assert stages["eval/m/ks2/logreg"]["score"] > 0
    assert (finished / "report" / "report.md").exists()

    # a second `maebench run` submits nothing; --status shows each stage's job and log
    assert main(["run", str(finished.parent / "tiny.yaml"), "--run-dir", str(finished)]) == 0
    assert json.loads((finished / "manifest.json").read_text())["stages"]["pretrain/m"]["job"] == \
        stages["pretrain/m"]["job"]
    capsys.readouterr()
    assert main(["run", str(finished.parent / "tiny.yaml"), "--run-dir", str(finished), "--status"]) == 0
    out = capsys.readouterr().out
    assert f"job {stages['pretrain/m']['job']['id']}" in out and stages["pretrain/m"]["job"]["stdout"] in out


def test_a_killed_pretraining_job_is_resubmitted_and_resumes_to_the_same_weights(finished, recipe, tmp_path):
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "maebench", "run", str(recipe), "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = run_dir / "pretrain/m/checkpoints/step_00000004"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job = json.loads((run_dir / "manifest.json").read_text())["stages"]["pretrain/m"]["job"]
    _kill_job(int(job["id"]))  # as `scancel`: the job and its tasks, gone at once
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 1, output
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert stages["pretrain/m"]["status"] == "failed" and f"job {job['id']} ended" in stages["pretrain/m"]["error"]
    assert stages["eval/m/ks2/logreg"]["status"] == "blocked"

    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0  # resubmits the failed and blocked stages
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert stages["pretrain/m"]["job"]["id"] != job["id"] and stages["pretrain/m"]["status"] == "done"
    assert stages["pretrain/m"]["result"]["start_step"] >= 4  # resumed from the killed job's checkpoint
    assert (run_dir / FINAL).read_bytes() == (finished / FINAL).read_bytes()
    assert stages["eval/m/ks2/logreg"]["status"] == "done"


def test_a_preempted_pretraining_job_is_requeued_and_resumes_exactly(finished, recipe, tmp_path):
    parsed, pretrain, path = pipeline.load_pipeline(recipe)
    run_dir = tmp_path / "preempted"
    runner = pipeline.Runner(parsed, pretrain, run_dir, path, quiet=True)
    settings = launchers.launcher_settings(parsed.launcher, origin="test")
    spec = slurm.RunSpec(str(path), str(run_dir))
    call = slurm.PretrainJob(spec, "pretrain/m")
    requeued = call.checkpoint()  # what submitit pickles again on preemption: the same stage of the same run
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert (requeued.function.spec, requeued.function.key) == (spec, "pretrain/m")

    runner.write_pretrain_job("m")
    job = slurm.executor(run_dir, settings, "pretrain").submit(call)
    checkpoint = run_dir / "pretrain/m/checkpoints/step_00000004"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    tasks = _tasks(int(job.job_id))
    for pid in tasks:  # hold the tasks mid-training (a few steps are 1 s here), so the signal lands before the end
        os.kill(pid, signal.SIGSTOP)
    for pid in tasks:  # as SLURM does before preempting (--signal=USR2@N): submitit checkpoints and requeues
        os.kill(pid, signal.SIGUSR2)
    time.sleep(0.5)
    for pid in tasks:
        os.kill(pid, signal.SIGCONT)
    assert job.results() == ["done", "done"]  # both tasks, after the requeue
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()  # task 0's, every attempt
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log, log[-3000:]
    outcome = json.loads(slurm.outcome_path(run_dir, "pretrain/m").read_text())
    assert outcome["status"] == "done" and outcome["result"]["start_step"] >= 4
    assert (run_dir / FINAL).read_bytes() == (finished / FINAL).read_bytes()


def _tasks(controller: int) -> list[int]:
    """The task processes of a local job (its controller's children)."""
    return [int(pid) for pid in Path(f"/proc/{controller}/task/{controller}/children").read_text().split()]


def _kill_job(controller: int) -> None:
    """SIGKILL a local job's controller and its task processes."""
    for pid in [controller, *_tasks(controller)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------------- no jobs run


def test_the_sbatch_script_for_the_paper_recipe_asks_for_the_resources(tmp_path, capsys):
    parsed, pretrain, path = pipeline.load_pipeline("paper_finetune")
    settings = launchers.launcher_settings(parsed.launcher, origin="test", kind="slurm", partition="learnfair",
                                           account="speech", constraint="volta32gb", gpus=8, time_minutes=4320)
    pretraining = slurm.sbatch_text(settings, "pretrain", tmp_path)
    for line in ("--partition=learnfair", "--account=speech", "--constraint=volta32gb", "--gpus-per-node=8",
                 "--ntasks-per-node=8", "--nodes=1", "--time=4320", "--signal=USR2@120", "--cpus-per-task=10"):
        assert f"#SBATCH {line}\n" in pretraining, line
    evaluation = slurm.sbatch_text(settings, "eval", tmp_path, dependency="afterok:4242")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--dependency=afterok:4242",
                 "--kill-on-invalid-dep=yes", f"--time={settings.eval_time_minutes}"):
        assert f"#SBATCH {line}\n" in evaluation, line

    # the dry run lists one job per pretraining and evaluation, each evaluation after its pretraining
    assert main(["run", "paper_finetune", "--launcher", "slurm", "--dry-run", "--run-dir", str(tmp_path / "r"),
                 "--pretrain-data", str(tmp_path), "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    planned = pipeline.plan(parsed, pretrain)
    jobs = [line for line in out.splitlines() if line.startswith("  pretrain/") or line.startswith("  eval/")]
    assert len(jobs) == sum(s.kind in ("pretrain", "eval") for s in planned)
    assert all("8 GPU" in line for line in jobs if line.startswith("  pretrain/"))
    evals = [s for s in planned if s.kind == "eval" and s.needs]
    assert evals and all(f"after {s.needs[0]} (afterok)" in out for s in evals)
    assert "estimated GPU hours" in out and not (tmp_path / "r").exists()


def test_submitits_slurm_executor_takes_the_parameters(tmp_path, monkeypatch):
    """The real SlurmExecutor (found `srun` on PATH: an empty script, nothing is submitted) accepts every parameter
    and writes them into its sbatch file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = launchers.launcher_settings({"kind": "slurm", "partition": "p", "mem_gb_per_gpu": 64, "gpus": 4},
                                           origin="test")
    ex = slurm.executor(tmp_path / "run", settings, "pretrain", dependency="afterok:7")
    text = ex._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=p", "--gpus-per-node=4", "--ntasks-per-node=4", "--mem=256GB", "--dependency=afterok:7"):
        assert f"#SBATCH {line}\n" in text, line
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MaebenchError) as excinfo:
        slurm.executor(tmp_path / "run", settings, "eval")
    one_line_error(excinfo, "srun", "cluster: local")


def test_a_launcher_section_is_checked_when_the_recipe_is_read(recipe, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("gpus: 2,", "gpu: 2,"))
    with pytest.raises(MaebenchError) as excinfo:
        pipeline.load_pipeline(bad)
    one_line_error(excinfo, "launcher.gpu", "gpus")
    bad.write_text(recipe.read_text().replace("kind: slurm", "kind: pbs"))
    with pytest.raises(MaebenchError) as excinfo:
        pipeline.load_pipeline(bad)
    one_line_error(excinfo, "launcher.kind 'pbs'", "slurm")


def test_devices_on_one_machine():
    # pretraining: one process per GPU, torchrun's variables, one rendezvous
    envs = launchers.local_ddp_environments(gpus=4)
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"] == [e["LOCAL_RANK"] for e in envs]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"} and len({e["MASTER_PORT"] for e in envs}) == 1
    assert launchers.local_ddp_environments(gpus=1) == [{}] == launchers.local_ddp_environments(gpus=0)
    # evaluations: one worker per GPU, each pinned; CPU workers (no pin) without GPUs
    assert launchers.eval_worker_devices(jobs=2, gpus=4) == ["0", "1", "2", "3"]
    assert launchers.eval_worker_devices(jobs=3, gpus=0) == [None, None, None]


def test_submitit_environment_becomes_torchruns(monkeypatch):
    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "123456", "SUBMITIT_LOCAL_NTASKS": "2",
                        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                        "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        monkeypatch.setenv(name, value)
    env = slurm.torchrun_environment(submitit.JobEnvironment())
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("1", "1", "2")
    assert 20000 <= int(env["MASTER_PORT"]) < 40000 and env["MASTER_ADDR"]
