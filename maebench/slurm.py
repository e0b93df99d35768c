"""`maebench run --launcher slurm`: each stage a SLURM job, through submitit (the client FAIR's tooling uses).

    pretraining   one job, one task per GPU; each task sets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
                  MASTER_ADDR, MASTER_PORT) from submitit's JobEnvironment, so maebench.distributed joins the
                  process group exactly as under torchrun. A Checkpointable: preempted or at its time limit, it is
                  requeued and resumes from its run directory's last checkpoint, as a re-run does.
    evaluation    one job each, after its pretraining job succeeded (afterok)
    summary       one final job (feature stats, compare, report) after every evaluation job ended (afterany)

The run directory (on the shared filesystem) holds everything:

    RUN/manifest.json        each stage's status; a submitted stage's entry names its job (id, stdout, stderr)
    RUN/jobs/KEY.json        what the job of stage KEY left (its manifest fields): read into the manifest by the
                             next `maebench run` / `--status`, or by the final job
    RUN/slurm/               submitit's folder: each job's pickled call, result and logs (JOBID_0_log.out ...)

`maebench run` again (or with --status) reads the jobs' states: a stage whose job is pending or running is left
alone, a failed, cancelled or vanished one is submitted again, a done one is skipped. `cluster: local` runs the
same jobs through submitit's LocalExecutor on this machine (no scheduler, so no dependencies: the jobs run in
waves and `maebench run` waits for them); it is how the cluster path is tried and tested without a cluster.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maebench.errors import MaebenchError
from maebench.launchers import LauncherSettings

ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "UNKNOWN")  # UNKNOWN: sacct has not seen a job just submitted: never submit it twice
JOBS_DIR = "jobs"
SUBMITIT_DIR = "slurm"
SUMMARY_JOB = "summary"


# ---------------------------------------------------------------------------------------------------- job calls
# What runs inside a submitit job: plain, picklable, and rebuilt from the recipe on the shared filesystem.


@dataclass
class RunSpec:
    """How a job rebuilds the pipeline: the recipe, its data overrides and the run directory."""

    recipe: str
    run_dir: str
    pretrain_data: str | None = None
    eval_data: str | None = None

    def runner(self):
        from maebench.pipeline import Runner, load_pipeline

        parsed, pretrain, path = load_pipeline(self.recipe, pretrain_data=self.pretrain_data,
                                               eval_data=self.eval_data)
        return Runner(parsed, pretrain, Path(self.run_dir), path, quiet=True)


def torchrun_environment(env) -> dict[str, str]:
    """torchrun's variables from a submitit JobEnvironment (port from the job id: the same on every task)."""
    digits = "".join(ch for ch in str(env.job_id) if ch.isdigit()) or "0"
    return {"RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.num_tasks // max(1, env.num_nodes)),
            "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(20000 + int(digits[-6:]) % 20000)}


def _job_id() -> str:
    import submitit

    return str(submitit.JobEnvironment().job_id).split("_")[0]


def write_outcome(run_dir: Path, key: str, fields: dict[str, Any]) -> None:
    from maebench.atomic import write_text_atomic

    path = outcome_path(run_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({**fields, "job_id": _job_id()}, indent=2, default=str) + "\n")


def outcome_path(run_dir: Path, key: str) -> Path:
    return run_dir / JOBS_DIR / (key.replace("/", "__") + ".json")


class PretrainJob:
    """One pretraining stage as a job of `tasks` processes (one per GPU). Checkpointable: submitit calls
    `checkpoint` on preemption or at the time limit, and requeues the same call, which resumes from the run
    directory's last checkpoint (pretraining saves every `train.ckpt_every` steps, atomically)."""

    def __init__(self, spec: RunSpec, key: str) -> None:
        self.spec, self.key = spec, key

    def __call__(self) -> str:
        import submitit

        from maebench.pipeline import _child

        env = submitit.JobEnvironment()
        os.environ.update(torchrun_environment(env) if env.num_tasks > 1 else {})
        runner = self.spec.runner()
        name = self.key.split("/", 1)[1]
        job_path = runner.run_dir / "pretrain" / f"{name}.job.json"
        started = time.perf_counter()
        try:
            _child(job_path)
        except Exception as err:
            if env.global_rank == 0:
                write_outcome(runner.run_dir, self.key, {"status": "failed", "error": f"{type(err).__name__}: {err}"})
            raise
        if env.global_rank == 0:
            fields = runner.pretrain_fields(name)
            write_outcome(runner.run_dir, self.key, {"status": "done", **fields,
                                                     "seconds": round(time.perf_counter() - started, 1)})
        return "done"

    def checkpoint(self):
        """Requeue this very call: the trainer resumes exactly from the last checkpoint it wrote."""
        import submitit

        return submitit.helpers.DelayedSubmission(PretrainJob(self.spec, self.key))


def run_eval_job(spec: RunSpec, key: str) -> str:
    """One evaluation stage as a job: its outcome file, then the job fails too when the stage did."""
    runner = spec.runner()
    stage = next(s for s in runner.stages if s.key == key)
    fields = runner.execute(stage)
    write_outcome(runner.run_dir, key, fields)
    if fields["status"] != "done":
        raise MaebenchError(f"{key}: {fields.get('error')}")
    return "done"


def run_summary_job(spec: RunSpec) -> str:
    """The final job: every stage job's outcome into the manifest, then stats / compare / report, in order."""
    from maebench.pipeline import SUMMARY_KINDS
    from maebench.run_checkpoint import RunLock

    runner = spec.runner()
    lock = RunLock(runner.run_dir, command="maebench run (summary job)", wait_s=600)
    try:
        runner.manifest.reload()
        absorb_outcomes(runner, job_states={})
        bad = sum(runner._run_stage(stage) for stage in runner.stages if stage.kind in SUMMARY_KINDS)
        runner._set_latest()
    finally:
        lock.release()
    return "done" if not bad else f"{bad} summary stage(s) failed"


# ---------------------------------------------------------------------------------------------------- submitting


def executor(run_dir: Path, settings: LauncherSettings, kind: str, dependency: str | None = None):
    """A submitit executor for one job of a stage kind, with its resources (and SLURM dependency)."""
    try:
        import submitit
    except ImportError:
        raise MaebenchError("--launcher slurm needs submitit: pip install 'maebench[cluster]'") from None
    folder = run_dir / SUBMITIT_DIR
    res = settings.job_resources(kind)
    if settings.cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
        ex.update_parameters(tasks_per_node=res["tasks"], timeout_min=res["minutes"], gpus_per_node=0)
        return ex
    try:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    except RuntimeError as err:  # no srun: not on a SLURM login node
        raise MaebenchError(f"--launcher slurm: {err} (run it on a login node, or set launcher.cluster: local "
                            "to try the jobs on this machine)") from None
    ex.update_parameters(**slurm_parameters(settings, kind, dependency))
    return ex


def slurm_parameters(settings: LauncherSettings, kind: str, dependency: str | None = None) -> dict[str, Any]:
    """The sbatch parameters (submitit's SlurmExecutor names) of one job of a stage kind."""
    res = settings.job_resources(kind)
    params: dict[str, Any] = {"job_name": f"maebench-{kind}", "time": res["minutes"], "nodes": 1,
                              "ntasks_per_node": res["tasks"], "cpus_per_task": settings.cpus_per_gpu,
                              "signal_delay_s": 120, "additional_parameters": {"kill-on-invalid-dep": "yes"}}
    if res["gpus"]:
        params["gpus_per_node"] = res["gpus"]
        if settings.mem_gb_per_gpu:
            params["mem"] = f"{settings.mem_gb_per_gpu * res['gpus']}GB"
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(settings, name):
            params[name] = getattr(settings, name)
    if dependency:
        params["dependency"] = dependency
    return params


def sbatch_text(settings: LauncherSettings, kind: str, folder: Path, dependency: str | None = None) -> str:
    """The sbatch script submitit's SlurmExecutor would write for one job (rendered here, nothing submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = "python -u -m submitit.core._submit " + str(folder)
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(settings, kind, dependency))


def job_state(entry: dict[str, Any], run_dir: Path) -> str:
    """The scheduler's state of a stage's job (RUNNING, PENDING, COMPLETED, FAILED, ...; ENDED for a local job
    whose process is gone)."""
    job = entry.get("job") or {}
    if job.get("cluster") == "local":
        try:
            os.kill(int(job["id"]), 0)
        except (ProcessLookupError, ValueError):
            return "ENDED"
        except PermissionError:
            return "RUNNING"
        return "RUNNING" if not _zombie(int(job["id"])) else "ENDED"
    import submitit

    state = submitit.SlurmJob(folder=run_dir / SUBMITIT_DIR, job_id=str(job["id"])).state
    return str(state).split()[0].upper()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


def absorb_outcomes(runner, job_states: dict[str, str]) -> None:
    """Each submitted stage whose job left its outcome becomes done / failed in the manifest; one whose job ended
    without an outcome (killed, cancelled, out of time for good) becomes failed, naming its log."""
    run_dir = runner.run_dir
    for key, entry in list(runner.manifest.stages.items()):
        if entry.get("status") != "submitted":
            continue
        job = entry["job"]
        path = outcome_path(run_dir, key)
        if path.exists():
            outcome = json.loads(path.read_text())
            if str(outcome.pop("job_id", "")) == str(job["id"]):
                runner.manifest.record(key, **outcome, job=job)
                continue
        state = job_states.get(key) or job_state(entry, run_dir)
        job_states[key] = state
        if state not in ACTIVE_STATES:
            runner.manifest.record(key, status="failed", job=job, error=f"job {job['id']} ended ({state}) without "
                                   f"finishing its stage: see {job['stdout']} and {job['stderr']}")


def status_lines(runner) -> list[str]:
    """One line per stage: status, job id, scheduler state, log."""
    lines = []
    for stage in runner.stages:
        entry = runner.manifest.stages.get(stage.key) or {}
        job = entry.get("job") or {}
        state = job_state(entry, runner.run_dir) if entry.get("status") == "submitted" else ""
        where = f"job {job['id']} {state}".rstrip() + f"  log {job['stdout']}" if job else ""
        lines.append(f"  {entry.get('status', 'todo'):<9} {stage.key:<44} {where}")
    final = runner.manifest.data.get(SUMMARY_JOB)
    if final:  # the job that ran (or will run) the stats / compare / report stages
        lines.append(f"  {'job':<9} {SUMMARY_JOB:<44} job {final['id']} {job_state({'job': final}, runner.run_dir)}"
                     f"  log {final['stdout']}")
    return lines


def submit_pipeline(runner, spec: RunSpec, settings: LauncherSettings) -> int:
    """Submit every stage not done and without a live job; returns the number of stages failed for good (blocked
    in the local cluster's waves). With cluster: local, waits for the jobs (no scheduler to hold dependencies)."""
    from maebench import pipeline_log as log
    from maebench.atomic import write_text_atomic
    from maebench.pipeline import SUMMARY_KINDS
    from maebench.run_checkpoint import RunLock

    lock = RunLock(runner.run_dir, command="maebench run --launcher slurm")
    try:
        runner.manifest.reload()
        if not (runner.run_dir / "recipe.yaml").exists():
            write_text_atomic(runner.run_dir / "recipe.yaml", runner.recipe_text)
        runner.manifest.save()
        states: dict[str, str] = {}
        absorb_outcomes(runner, states)
        jobs: dict[str, Any] = {}  # stage key -> job id it waits on (live or submitted now)
        waves = [[s for s in runner.stages if s.kind == kind] for kind in ("pretrain", "eval")]
        resubmitted = False
        for wave in waves:
            for stage in wave:
                entry = runner.manifest.stages.get(stage.key) or {}
                if runner.manifest.is_done(stage.key):
                    continue
                if entry.get("status") == "submitted":  # live: never duplicated
                    jobs[stage.key] = entry["job"]["id"]
                    log.say(stage.key, f"job {entry['job']['id']} is {states.get(stage.key, 'live')}: left alone")
                    continue
                waits = [jobs[n] for n in stage.needs if n in jobs]
                if any(not runner.manifest.is_done(n) and n not in jobs for n in stage.needs):
                    runner.manifest.record(stage.key, status="blocked",
                                           error=f"needs {', '.join(stage.needs)}, which failed")
                    continue
                jobs[stage.key] = _submit(runner, spec, settings, stage, waits)
                resubmitted = True
            if settings.cluster == "local":
                _wait_local(runner, [jobs[s.key] for s in wave if s.key in jobs])
                absorb_outcomes(runner, {})
                jobs = {k: v for k, v in jobs.items() if runner.manifest.stages[k].get("status") == "submitted"}
        summary = [s for s in runner.stages if s.kind in SUMMARY_KINDS]
        live = runner.manifest.data.get(SUMMARY_JOB)
        live = live if live and job_state({"job": live}, runner.run_dir) in ACTIVE_STATES else None
        summary_id = None
        if summary and (resubmitted or not all(runner.manifest.is_done(s.key) for s in summary)):
            if live and not resubmitted:
                log.say(SUMMARY_JOB, f"job {live['id']} is live: left alone")
            else:
                summary_id = _submit(runner, spec, settings, summary[0], list(jobs.values()), name=SUMMARY_JOB)
    finally:
        lock.release()  # the summary job takes it to write the manifest
    if settings.cluster == "local" and summary_id:
        _wait_local(runner, [summary_id])
    runner.manifest.reload()
    return sum(1 for s in runner.stages if runner.manifest.stages.get(s.key, {}).get("status") in ("failed",
                                                                                                  "blocked"))


def _submit(runner, spec: RunSpec, settings: LauncherSettings, stage, waits: list[str], name: str | None = None):
    """Submit one stage's job; its manifest entry becomes "submitted" with the job's id and logs."""
    from maebench import pipeline_log as log

    kind = stage.kind if name is None else "summary"
    dependency = None
    if waits and settings.cluster == "slurm":
        dependency = ("afterany:" if kind == "summary" else "afterok:") + ":".join(str(w) for w in waits)
    ex = executor(runner.run_dir, settings, kind, dependency)
    if kind == "pretrain":
        runner.write_pretrain_job(stage.params["name"])
        outcome_path(runner.run_dir, stage.key).unlink(missing_ok=True)
        job = ex.submit(PretrainJob(spec, stage.key))
    elif kind == "eval":
        outcome_path(runner.run_dir, stage.key).unlink(missing_ok=True)
        job = ex.submit(run_eval_job, spec, stage.key)
    else:
        job = ex.submit(run_summary_job, spec)
    entry = {"id": str(job.job_id), "cluster": settings.cluster, "stdout": str(job.paths.stdout),
             "stderr": str(job.paths.stderr), **settings.job_resources(kind)}
    if name:  # the summary job: beside the stages (its stages record themselves)
        runner.manifest.data[name] = entry
        runner.manifest.save()
    else:
        runner.manifest.record(stage.key, status="submitted", job=entry, **({"waits_on": waits} if waits else {}))
    log.say(name or stage.key, f"submitted: job {job.job_id}" + (f" after {', '.join(map(str, waits))}"
                                                                  if waits else ""))
    return str(job.job_id)


def _wait_local(runner, ids: list[str], poll_s: float = 1.0) -> None:
    """The local cluster: wait until these job processes are gone."""
    for job_id in ids:
        while job_state({"job": {"id": job_id, "cluster": "local"}}, runner.run_dir) == "RUNNING":
            time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------------- dry run


def describe_jobs(runner, settings: LauncherSettings) -> str:
    """The jobs `--launcher slurm` would submit: resources, dependencies and estimated GPU hours."""
    lines = [f"jobs of {runner.recipe_path.stem} in {runner.run_dir} ({settings.cluster}: partition "
             f"{settings.partition or 'default'}, account {settings.account or 'default'}"
             + (f", constraint {settings.constraint}" if settings.constraint else "") + "):"]
    total = 0.0
    for stage in runner.stages:
        if stage.kind not in ("pretrain", "eval") or runner.manifest.is_done(stage.key):
            continue
        res = settings.job_resources(stage.kind)
        after = f"  after {', '.join(stage.needs)} (afterok)" if stage.needs else ""
        lines.append(f"  {stage.key:<44} {res['gpus']} GPU x {res['minutes'] / 60:g} h max, "
                     f"{stage.gpu_hours:.1f} GPU h est.{after}")
        total += stage.gpu_hours
    if any(s.kind not in ("pretrain", "eval") for s in runner.stages):
        lines.append(f"  {SUMMARY_JOB:<44} CPU job x {settings.summary_time_minutes / 60:g} h max, after every "
                     "evaluation job (afterany): " + ", ".join(s.key for s in runner.stages
                                                              if s.kind not in ("pretrain", "eval")))
    lines.append(f"estimated GPU hours: {total:.1f} (the recipe's one-GPU estimates)")
    return "\n".join(lines)
