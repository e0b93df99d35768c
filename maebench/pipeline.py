"""The stage runner behind `maebench run RECIPE` and `maebench demo`: pretrain -> evaluate -> compare -> report.

A pipeline recipe (YAML with a top-level `pipeline: 1`, in recipes/) names pretraining runs, the evaluations
(tasks x probes x upstreams) and whether to compare and report. Every stage runs under one run directory:

    RUN/manifest.json            what ran: each stage's status, timings, outputs (rewritten atomically)
    RUN/recipe.yaml              the recipe as given (a different recipe in the same RUN is refused)
    RUN/.lock                    held by the live `maebench run` (a second one on RUN is refused, naming its pid)
    RUN/pretrain/NAME/           a `maebench pretrain` run directory (exact resume: maebench.trainer)
    RUN/pretrain/NAME/init/      its random init (the weights step 0 started from; written by maebench.trainer)
    RUN/pretrain/NAME.log        that pretraining's whole output (its manifest entry's "log")
    RUN/evals/...                one results.json per evaluation (maebench.downstream.evaluate)
    RUN/stats/                   per-layer feature statistics of every upstream (maebench.feature_stats)
    RUN/compare/, RUN/report/    the comparison table and the report (maebench.compare, maebench.report)

A stage whose manifest entry is "done" (and whose outputs still exist) is skipped; a failed stage is recorded with
its error and the stages that do not depend on it still run, so one failure loses nothing else. Pretraining runs in
a child process (its own peak memory; an interrupt leaves its last checkpoint, from which a re-run resumes exactly)
that dies with this one (maebench.lifetime: `kill` or a SIGKILL of `maebench run` leaves no orphan training).
A wall-clock `budget_seconds` is turned into a step count once: the run's own first steps (inside the lr warm-up)
are timed on the real data, max_steps = budget / step time is recorded in RUN/pretrain/NAME.calibration.json and
reused on every re-run, so an interrupted run resumes exactly to the same weights. With `evals.jobs` > 1 the
evaluations run in that many worker processes; only this process writes the manifest.

What the pipeline prints is its own (maebench.pipeline_log): a line when each stage starts and one when it ends.
A pipeline moves the latest-run pointer (`maebench eval` without --upstream) only when its recipe's `set_latest`
names a pretraining stage.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from maebench import pipeline_log as log
from maebench.atomic import write_text_atomic
from maebench.errors import MaebenchError
from maebench.settings import from_mapping

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
INIT_SUFFIX = "@init"  # "mae_ast@init" in a recipe = the pretraining stage mae_ast's random init
SUMMARY_KINDS = ("stats", "compare", "report")  # stages that read every evaluation: redone when one ran
FOLDED_TASKS = ("esc50", "er")  # cross-validated (5 folds): one seed per fold; other tasks have one split


@dataclass
class PretrainStage:
    """One pretraining run: a pretraining recipe, `--set` overrides, data, and an optional wall-clock budget."""

    recipe: str | None = None  # a pretraining recipe (bundled name or path); None = the dataclass defaults
    set: tuple[str, ...] = ()  # `section.key=value` overrides, as `maebench pretrain --set`
    data: str | None = None  # None = the recipe's data.source (the built-in corpus by default)
    budget_seconds: float | None = None  # wall-clock training budget -> train.max_steps (calibrated once)
    calibration_steps: int = 20  # with a budget: the first steps, timed (at most the lr warm-up)
    threads: int | None = None  # CPU threads (None: maebench.trainer.cpu_threads decides)
    gpu_hours: float = 0.0  # estimate shown by --dry-run (one GPU)


@dataclass
class EvalStage:
    """Tasks x probes x upstreams. An upstream is a pretraining stage's name, NAME@init, or any --upstream spec."""

    tasks: tuple[str, ...] = ()
    probes: tuple[str, ...] = ("linear",)
    upstreams: tuple[str, ...] = ()
    seeds: int = 1  # seeds on tasks with one split
    fold_seeds: int = 1  # seeds per fold on cross-validated tasks (esc50, er)
    probe_seeds: dict[str, int] = field(default_factory=dict)  # probe -> seeds on one-split tasks (beats `seeds`)
    data: str | None = None  # ROOT/<task> holds each dataset; None = the built-in toy tasks
    set: dict[str, Any] = field(default_factory=dict)  # probe -> {setting: value} (as `maebench eval --set`)
    # evaluations run at once, each in its own process with an equal share of the CPU threads (1 = one after the
    # other, in this process). The logreg probe fits on one core, so on a CPU 2 keeps two cores busy.
    jobs: int = 1
    gpu_hours: dict[str, float] = field(default_factory=dict)  # probe -> estimated GPU hours per task evaluation


@dataclass
class Recipe:
    pipeline: int = 1
    description: str = ""
    pretrain: dict[str, Any] = field(default_factory=dict)  # name -> PretrainStage fields
    evals: EvalStage = field(default_factory=EvalStage)
    compare: bool = True
    feature_stats: bool = False  # per-layer token cosine and effective dimension of every upstream (the report's)
    report: bool = True
    set_latest: str | None = None  # a pretrain stage that becomes the run `maebench eval` uses without --upstream
    launcher: dict[str, Any] = field(default_factory=dict)  # where stages run: maebench.launchers.LauncherSettings


@dataclass
class Stage:
    """One unit of work in the plan; `key` names it in the manifest."""

    key: str
    kind: str  # pretrain | eval | compare | report
    gpu_hours: float = 0.0
    needs: tuple[str, ...] = ()  # stage keys that must be done first
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- recipes


def load_pipeline(recipe: str | Path, *, pretrain_data: str | None = None, eval_data: str | None = None
                  ) -> tuple[Recipe, dict[str, PretrainStage], Path]:
    """A pipeline recipe (path or bundled name), checked: unknown keys and bad values are one-line errors.
    `pretrain_data` replaces every pretraining stage's data, `eval_data` the evaluations' data root."""
    from maebench.config import read_recipe_yaml

    path, data = read_recipe_yaml(recipe)
    if not isinstance(data, dict) or "pipeline" not in data:
        raise MaebenchError(f"recipe {path} is a pretraining recipe, not a pipeline (no `pipeline: 1` key): use "
                            f"`maebench pretrain --recipe {path}`, or pick a pipeline recipe such as demo")
    origin = f"recipe {path}"
    parsed = from_mapping(Recipe, data, origin=origin, kind="pipeline key")
    if parsed.pipeline != 1:
        raise MaebenchError(f"{origin}: pipeline: {parsed.pipeline} is not a pipeline format this maebench reads "
                            "(1); write `pipeline: 1`")
    bad_sets = [probe for probe, values in parsed.evals.set.items() if not isinstance(values, dict)]
    if bad_sets:
        raise MaebenchError(f"{origin}: evals.set.{bad_sets[0]} must be a mapping of probe settings, e.g. "
                            f"`set: {{{bad_sets[0]}: {{max_steps: 500}}}}`")
    stages = {str(name): from_mapping(PretrainStage, fields or {}, origin=origin, kind="pretrain key",
                                      prefix=f"pretrain.{name}.") for name, fields in parsed.pretrain.items()}
    for spec in stages.values():
        spec.data = pretrain_data or spec.data
    parsed.evals.data = eval_data or parsed.evals.data
    known = set(stages) | {f"{name}{INIT_SUFFIX}" for name in stages}
    for spec in parsed.evals.upstreams:
        if spec.endswith(INIT_SUFFIX) and spec not in known:
            raise MaebenchError(f"{origin}: evals.upstreams names {spec!r} but there is no pretrain stage "
                                f"{spec[:-len(INIT_SUFFIX)]!r} ({', '.join(stages) or 'none defined'})")
    if parsed.set_latest is not None and parsed.set_latest not in stages:
        raise MaebenchError(f"{origin}: set_latest names {parsed.set_latest!r} but there is no such pretrain stage "
                            f"({', '.join(stages) or 'none defined'})")
    from maebench.launchers import launcher_settings

    launcher_settings(parsed.launcher, origin=origin)  # checked now, used by `maebench run`
    if parsed.evals.jobs < 1:
        raise MaebenchError(f"{origin}: evals.jobs must be at least 1, got {parsed.evals.jobs}")
    bad_probes = [p for p in parsed.evals.probes if p not in ("linear", "logreg", "finetune", "hear")]
    if bad_probes:
        raise MaebenchError(f"{origin}: unknown probe(s) {', '.join(bad_probes)} in evals.probes "
                            "(linear, logreg, finetune, hear)")
    return parsed, stages, path


def plan(recipe: Recipe, pretrain: dict[str, PretrainStage]) -> list[Stage]:
    """Every stage in run order: pretraining, then each (upstream, task, probe), then compare and report."""
    stages = [Stage(f"pretrain/{name}", "pretrain", spec.gpu_hours, params={"name": name})
              for name, spec in pretrain.items()]
    ev = recipe.evals
    for upstream in ev.upstreams:
        source = upstream[:-len(INIT_SUFFIX)] if upstream.endswith(INIT_SUFFIX) else upstream
        needs = (f"pretrain/{source}",) if source in pretrain else ()
        for task in ev.tasks:
            for probe in ev.probes:
                seeds = ev.fold_seeds if task in FOLDED_TASKS else int(ev.probe_seeds.get(probe, ev.seeds))
                stages.append(Stage(f"eval/{upstream}/{task}/{probe}", "eval", float(ev.gpu_hours.get(probe, 0.0)),
                                    needs, {"upstream": upstream, "task": task, "probe": probe, "seeds": seeds}))
    evals = tuple(s.key for s in stages if s.kind == "eval")
    if recipe.feature_stats and ev.upstreams and ev.tasks:
        needs = tuple(sorted({n for s in stages if s.kind == "eval" for n in s.needs}))
        stages.append(Stage("stats", "stats", needs=needs))
    if recipe.compare and evals:
        stages.append(Stage("compare", "compare"))
    if recipe.report:
        stages.append(Stage("report", "report"))
    return stages


# ---------------------------------------------------------------------------------------------------- manifest


class Manifest:
    """RUN/manifest.json: per stage its status (done / failed / blocked), timings and outputs."""

    def __init__(self, run_dir: Path, recipe_name: str, recipe_hash: str) -> None:
        self.path = run_dir / MANIFEST
        self.recipe_hash = recipe_hash
        self.data: dict[str, Any] = {"maebench_pipeline": MANIFEST_FORMAT, "recipe": recipe_name,
                                     "recipe_hash": recipe_hash, "stages": {}}
        self.reload()

    def reload(self) -> None:
        """Read the saved manifest, if any: a corrupt one, or one of another recipe, is refused (one line)."""
        if not self.path.exists():
            return
        saved = read_manifest(self.path)
        if saved.get("recipe_hash") != self.recipe_hash:
            raise MaebenchError(f"{self.path.parent} holds a run of another recipe ({saved.get('recipe')}, or an "
                                "edited one): choose another --run-dir, or move that directory away")
        self.data = saved

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data["stages"]

    def resolve(self, path: str) -> Path:
        """An output path of the manifest: relative to the run directory (so it can move), or absolute."""
        return self.path.parent / path

    def is_done(self, key: str) -> bool:
        entry = self.stages.get(key) or {}
        outputs = [self.resolve(p) for p in (entry.get("outputs") or {}).values() if isinstance(p, str)]
        return entry.get("status") == "done" and all(p.exists() for p in outputs)

    def record(self, key: str, **entry: Any) -> None:
        if "outputs" in entry:  # stored relative to the run directory when inside it
            root = self.path.parent.resolve()
            entry["outputs"] = {name: _relative(Path(value).resolve(), root)
                                for name, value in entry["outputs"].items()}
        self.stages[key] = {**entry, "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.save()

    def order(self, keys: list[str]) -> None:
        """Put the entries in plan order (parallel evaluations finish in any order); others keep their place after."""
        stages = self.stages
        self.data["stages"] = {**{k: stages[k] for k in keys if k in stages},
                               **{k: v for k, v in stages.items() if k not in keys}}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    """A pipeline manifest.json, checked: an object whose `stages` maps stage keys to objects."""
    advice = "move it away to start the run again (or choose another --run-dir)"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MaebenchError(f"{path} is unreadable ({reason}): {advice}") from None
    stages = saved.get("stages") if isinstance(saved, dict) else None
    if not isinstance(saved, dict) or "maebench_pipeline" not in saved or not isinstance(stages, dict) \
            or not all(isinstance(entry, dict) for entry in stages.values()):
        raise MaebenchError(f"{path} is not a maebench pipeline manifest (an object with a `stages` object of "
                            f"stage entries): {advice}")
    return saved


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# ---------------------------------------------------------------------------------------------------- running


@dataclass
class Runner:
    """Runs a planned pipeline in RUN, stage by stage, skipping what the manifest says is done."""

    recipe: Recipe
    pretrain: dict[str, PretrainStage]
    run_dir: Path
    recipe_path: Path
    quiet: bool = False
    stages: list[Stage] = field(default_factory=list)
    show_status: Callable[[str], None] = field(default=lambda text: None, repr=False)  # the running stage's bar

    def __post_init__(self) -> None:
        self.stages = plan(self.recipe, self.pretrain)
        text = self.recipe_path.read_text()
        data = json.dumps([self.recipe.evals.data, {n: s.data for n, s in self.pretrain.items()}])
        identity = hashlib.sha256(f"{text}\n{data}".encode()).hexdigest()[:16]  # the recipe and its data paths
        self.manifest = Manifest(self.run_dir, self.recipe_path.stem, identity)
        self.recipe_text = text

    def run(self) -> int:
        """Every stage in order; returns the number of failed or blocked stages (0 = all done). Holds RUN/.lock
        meanwhile: a second `maebench run` on the same directory is refused, naming this one's pid."""
        from maebench.run_checkpoint import RunLock
        from maebench.upstream.checkpoint import RUN_LOCK_FILE

        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise MaebenchError(f"run directory {self.run_dir} is a file: choose another --run-dir")
        if self.run_dir.is_dir() and any(p.name != RUN_LOCK_FILE for p in self.run_dir.iterdir()) \
                and not self.manifest.path.exists():
            raise MaebenchError(f"{self.run_dir} already holds files that are not a pipeline run (no {MANIFEST}): "
                                "choose another --run-dir; nothing there was touched")
        lock = RunLock(self.run_dir, command="maebench run")  # released when this returns (or the process dies)
        try:
            self.manifest.reload()  # what a run that held the lock before us recorded
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> int:
        from maebench.progress import progress_bar

        if not (self.run_dir / "recipe.yaml").exists():
            write_text_atomic(self.run_dir / "recipe.yaml", self.recipe_text)
        self.manifest.save()
        estimates = _time_estimates(self.stages, self.pretrain, self.eval_jobs())
        bad, ran, skipped = 0, False, 0
        log.say(f"maebench run {self.recipe_path.stem}", f"{len(self.stages)} stages in {self.run_dir}")
        with progress_bar(self.quiet, unit="s", fields=("stage",)) as progress:
            task = progress.add_task("pipeline", total=sum(estimates.values()), stage="")
            for group in self._groups():
                summary = group[0].kind in SUMMARY_KINDS  # redone whenever a stage before them ran
                todo = [s for s in group if not self.manifest.is_done(s.key) or (summary and ran)]
                progress.advance(task, sum(estimates[s.key] for s in group if s not in todo))
                skipped += len(group) - len(todo)
                if not todo:
                    continue
                if skipped and not ran:
                    log.say("pipeline", f"{skipped} stage(s) done earlier are skipped (see {self.manifest.path})")
                ran = True
                if len(group) > 1:  # the evaluations, several at once
                    progress.update(task, stage=f"{len(todo)} evaluations, {self.eval_jobs()} at a time")
                    bad += self._run_parallel_evals(todo, lambda key: progress.advance(task, estimates[key]))
                    continue
                stage = todo[0]
                progress.update(task, stage=stage.key)
                self.show_status = lambda text, key=stage.key: progress.update(task, stage=f"{key} {text}")
                bad += self._run_stage(stage)
                progress.advance(task, estimates[stage.key])
        if not ran:
            log.say("pipeline", f"every stage was done earlier: nothing to run (see {self.manifest.path})")
        self._set_latest()
        return bad

    def _set_latest(self) -> None:
        """The recipe's `set_latest` pretraining run becomes the one `maebench eval` uses without --upstream."""
        from maebench.paths import record_latest_pretrain_run

        name = self.recipe.set_latest
        if name and self.manifest.is_done(f"pretrain/{name}"):
            record_latest_pretrain_run(self.run_dir / "pretrain" / name)
            log.say(f"pretrain/{name}", "now the latest pretraining run (`maebench eval` without --upstream uses it)")

    def _groups(self) -> list[list[Stage]]:
        """The stages in run order, one per group, except that with evals.jobs > 1 the evaluations form one group."""
        if self.eval_jobs() <= 1:
            return [[stage] for stage in self.stages]
        groups: list[list[Stage]] = []
        for stage in self.stages:
            if stage.kind == "eval" and groups and groups[-1][0].kind == "eval":
                groups[-1].append(stage)
            else:
                groups.append([stage])
        return groups

    def eval_jobs(self) -> int:
        """Evaluations at once: one per visible GPU, else the recipe's evals.jobs CPU workers."""
        from maebench.launchers import eval_worker_devices, visible_gpus

        return len(eval_worker_devices(self.recipe.evals.jobs, visible_gpus()))

    def _run_parallel_evals(self, stages: list[Stage], advance: Callable[[str], None]) -> int:
        """Evaluations in `evals.jobs` worker processes; the manifest is written here only, as each finishes.

        One work item per (upstream, task): its probes share one feature extraction. Toy tasks are built here
        first, so that workers never build the same one at once.
        """
        import concurrent.futures as futures
        import multiprocessing

        from maebench.trainer import cpu_threads

        bad, items = 0, {}
        for stage in stages:
            failed = [n for n in stage.needs if not self.manifest.is_done(n)]
            if failed:
                self.manifest.record(stage.key, status="blocked", error=f"needs {', '.join(failed)}")
                bad += 1
                advance(stage.key)
            else:
                items.setdefault((stage.params["upstream"], stage.params["task"]), []).append(stage)
        self._build_tasks({task for _, task in items})
        from maebench.launchers import eval_worker_devices, visible_gpus

        devices = eval_worker_devices(self.recipe.evals.jobs, visible_gpus())
        jobs = len(devices)
        started = time.perf_counter()
        log.started("evaluations", f"{sum(len(group) for group in items.values())}, {jobs} at a time")
        context = multiprocessing.get_context("spawn")  # no fork of a process that already runs OpenMP threads
        free = context.Queue()  # each worker takes one device (CUDA_VISIBLE_DEVICES) from it
        for device in devices:
            free.put(device)
        with futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_threads,
                                         initargs=(max(1, cpu_threads() // jobs), os.getpid(), free)) as pool:
            running = {pool.submit(_evaluate_group, self.run_dir, self.recipe.evals,
                                   [(s.key, s.params, self._upstream_spec(s.params["upstream"])) for s in group]
                                   ): group for group in items.values()}
            try:
                for future in futures.as_completed(running):
                    for key, outcome in _group_outcomes(future, running[future]):
                        bad += self._record_outcome(key, outcome)
                        advance(key)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        self.manifest.order([s.key for s in self.stages])
        log.say("evaluations", f"done in {log.duration(time.perf_counter() - started)}: {len(stages) - bad} of "
                f"{len(stages)} finished" + (f", {bad} failed or blocked" if bad else ""))
        return bad

    def _build_tasks(self, tasks: set[str]) -> None:
        """Build (or check) the toy tasks the evaluations will read; a task that cannot be read fails in its stage."""
        from maebench.downstream.datasets import load_task

        if self.recipe.evals.data:
            return
        for name in sorted(tasks):
            try:
                load_task(name)
            except MaebenchError:
                continue

    def _record_outcome(self, key: str, outcome: dict[str, Any]) -> int:
        self.manifest.record(key, **outcome)
        log.ended(key, outcome)
        return 0 if outcome["status"] == "done" else 1

    def _run_stage(self, stage: Stage) -> int:
        failed = [n for n in stage.needs if not self.manifest.is_done(n)]
        if failed:
            self.manifest.record(stage.key, status="blocked", error=f"needs {', '.join(failed)}")
            log.ended(stage.key, self.manifest.stages[stage.key])
            return 1
        log.started(stage.key, self._stage_detail(stage))
        return self._record_outcome(stage.key, self.execute(stage))

    def execute(self, stage: Stage) -> dict[str, Any]:
        """Run one stage here: its manifest fields, status "done" or "failed" (with the error)."""
        started = time.perf_counter()
        extra = {"log": stage_log(stage.params["name"])} if stage.kind == "pretrain" else {}
        try:
            outputs = getattr(self, f"_do_{stage.kind}")(stage)
        except Exception as err:  # any failure (a bug too) is recorded and the independent stages still run
            if not isinstance(err, MaebenchError):
                traceback.print_exc()
            return {"status": "failed", "error": _error_text(err), "seconds": round(time.perf_counter() - started, 1),
                    **extra}
        return {"status": "done", "seconds": round(time.perf_counter() - started, 1), **outputs, **extra}

    def _stage_detail(self, stage: Stage) -> str:
        """What the start line says about a stage: a pretraining's model, batch and budget; an evaluation's seeds."""
        if stage.kind == "pretrain":
            return self.pretrain_summary(stage.params["name"])  # its whole output: its manifest entry's "log"
        if stage.kind == "eval":
            return f"{stage.params['seeds']} seed(s)"
        return ""

    def pretrain_summary(self, name: str) -> str:
        """`mae_ast_patch:tiny, batch 16, 90 s budget`: a pretraining stage in a few words."""
        spec = self.pretrain[name]
        cfg = pretrain_config(spec, self.run_dir / "pretrain" / name)
        steps = f"{spec.budget_seconds:g} s budget" if spec.budget_seconds else f"{cfg.train.max_steps} steps"
        return f"{cfg.model.name}:{cfg.model.size}, batch {cfg.train.batch_size}, {steps}"

    # ---- the stage kinds (each returns the manifest fields of its entry)

    def _do_pretrain(self, stage: Stage) -> dict[str, Any]:
        from maebench.launchers import local_ddp_environments
        from maebench.lifetime import child_environment
        from maebench.run_checkpoint import RunLock

        name = stage.params["name"]
        job_path = self.write_pretrain_job(name)
        job = json.loads(job_path.read_text())
        cfg = pretrain_config(self.pretrain[name], self.run_dir / "pretrain" / name)
        error = Path(job["error"])
        RunLock(cfg.default_run_dir(), wait_s=30).release()  # a killed run's child may still be dying: wait for it
        log_path = self.run_dir / stage_log(name)  # the child's whole output, every attempt appended
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(f"==== {datetime.now(timezone.utc).isoformat(timespec='seconds')} pretrain/{name}\n")
            out.flush()
            # one child per visible GPU (torchrun's variables, so maebench.distributed joins them), else one child
            children = [subprocess.Popen([sys.executable, "-m", "maebench.pipeline", str(job_path)], stdout=out,
                                         stderr=subprocess.STDOUT, env={**child_environment(), **ddp,
                                                                        "PYTHONUNBUFFERED": "1"})
                        for ddp in local_ddp_environments(cfg.train.device)]
            codes = [_wait_for_child(child, lambda: self.show_status(log.training_status(
                cfg.default_run_dir(), _calibrated_steps(Path(job["calibration"]))))) for child in children]
        code = next((c for c in codes if c != 0), 0)
        if code != 0:
            reason = error.read_text().strip() if error.exists() else f"exited with status {code}"
            raise MaebenchError(f"pretraining {name}: {reason} (its log: {log_path}; re-running the same command "
                                "resumes from its last checkpoint)")
        return self.pretrain_fields(name)

    def write_pretrain_job(self, name: str) -> Path:
        """RUN/pretrain/NAME.job.json: what the pretraining child (or each DDP rank of a cluster job) runs."""
        spec = self.pretrain[name]
        cfg = pretrain_config(spec, self.run_dir / "pretrain" / name)
        job = {"config": _config_dict(cfg), "budget_seconds": spec.budget_seconds, "threads": spec.threads,
               "calibration_steps": spec.calibration_steps,
               "init_dir": str(init_dir(self.run_dir, name)), "quiet": False,  # its output goes to its log
               "calibration": str(self.run_dir / "pretrain" / f"{name}.calibration.json"),
               "result": str(self.run_dir / "pretrain" / f"{name}.result.json"),
               "error": str(self.run_dir / "pretrain" / f"{name}.error.txt")}
        job_path = self.run_dir / "pretrain" / f"{name}.job.json"
        job_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(job_path, json.dumps(job, indent=2) + "\n")
        Path(job["error"]).unlink(missing_ok=True)
        return job_path

    def pretrain_fields(self, name: str) -> dict[str, Any]:
        """The manifest fields of a finished pretraining stage, read from the files its run left."""
        spec = self.pretrain[name]
        cfg = pretrain_config(spec, self.run_dir / "pretrain" / name)
        job = json.loads((self.run_dir / "pretrain" / f"{name}.job.json").read_text())
        result = json.loads(Path(job["result"]).read_text())
        calibration = json.loads(Path(job["calibration"]).read_text()) if Path(job["calibration"]).exists() else None
        speed = training_speed(cfg.default_run_dir(), cfg.train.batch_size)
        return {"outputs": {"run": str(cfg.default_run_dir()), "init": job["init_dir"]},
                "model": f"{cfg.model.name}:{cfg.model.size}", "overrides": cfg.model.overrides,
                "batch_size": cfg.train.batch_size, "clip_seconds": cfg.data.clip_seconds,
                "budget_seconds": spec.budget_seconds, "calibration": calibration, "result": result, **speed}

    def _do_eval(self, stage: Stage) -> dict[str, Any]:
        upstream = self._upstream_spec(stage.params["upstream"])
        return evaluate_stage(self.run_dir, self.recipe.evals, stage.params, upstream)

    def _do_stats(self, stage: Stage) -> dict[str, Any]:
        from maebench.feature_stats import write_feature_stats

        evals = self.recipe.evals
        task = "ks2" if "ks2" in evals.tasks else evals.tasks[0]
        data = task_root(evals, task)
        upstreams = {name: self._upstream_spec(name) for name in evals.upstreams}
        written = write_feature_stats(upstreams, self.run_dir / "stats" / "feature_stats.json", task=task,
                                      data_root=data)
        return {"outputs": {"stats": str(written)}, "task": task}

    def _do_compare(self, stage: Stage) -> dict[str, Any]:
        from maebench.compare import build_comparison, read_result, write_outputs

        results = [read_result(self.manifest.resolve(e["outputs"]["results"])) for k, e in self.manifest.stages.items()
                   if k.startswith("eval/") and self.manifest.is_done(k)]
        if not results:
            raise MaebenchError("no evaluation finished: nothing to compare")
        written = write_outputs(build_comparison(results), self.run_dir / "compare")
        return {"outputs": {k: str(v) for k, v in written.items() if k in ("markdown", "csv")}}

    def _do_report(self, stage: Stage) -> dict[str, Any]:
        from maebench.probe_offline import finish_curves
        from maebench.report import write_report

        finish_curves([self.run_dir / "pretrain" / name for name in self.pretrain])  # probe points left pending
        written = write_report(self.run_dir, self.manifest.data, self.recipe.description)
        return {"outputs": {"report": str(written)}}

    def _upstream_spec(self, upstream: str) -> str:
        if upstream.endswith(INIT_SUFFIX):
            return str(init_dir(self.run_dir, upstream[:-len(INIT_SUFFIX)]))
        if upstream in self.pretrain:
            return str(self.run_dir / "pretrain" / upstream)
        return upstream


def evaluate_stage(run_dir: Path, evals: EvalStage, params: dict[str, Any], upstream: str) -> dict[str, Any]:
    """One evaluation stage (`params`: upstream, task, probe, seeds): its manifest fields."""
    from maebench.downstream.datasets import load_task
    from maebench.downstream.evaluate import evaluate

    data = task_root(evals, params["task"])
    overrides = {str(k): v for k, v in (evals.set.get(params["probe"]) or {}).items()}
    record = evaluate(params["task"], upstream, data_root=data, probe=params["probe"], seeds=params["seeds"],
                      out_dir=run_dir / "evals", overrides=overrides, quiet=True, show_table=False)
    try:  # built or read already by the evaluation: cheap
        items = sum(len(fold.test) for fold in load_task(params["task"], data).folds)
    except MaebenchError:  # a task kind load_task does not read (hear:PATH): the win rule then uses std only
        items = 0
    return {"outputs": {"results": record["results_path"]}, "score": record["score"], "std": record["std"],
            "metric": record["metric"], "test_items": items, **params}


def task_root(evals: EvalStage, task: str) -> Path | None:
    """ROOT/<task> of the evaluations' data, or None for the built-in toy (and for hear:PATH, which names its
    own folder)."""
    return Path(evals.data).expanduser() / task if evals.data and not task.startswith("hear:") else None


def _worker_threads(threads: int, parent_pid: int, devices=None) -> None:
    """An evaluation worker's set-up: dies with the runner, its share of the CPU threads, its own GPU if any."""
    device = devices.get() if devices is not None else None
    if device is not None:  # before CUDA is first used in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    import torch

    from maebench.lifetime import die_with_parent

    die_with_parent(parent_pid)
    torch.set_num_threads(threads)


def _evaluate_group(run_dir: Path, evals: EvalStage, items: list[tuple[str, dict[str, Any], str]]
                    ) -> list[tuple[str, dict[str, Any]]]:
    """In a worker process: each (key, params, upstream spec) evaluated in turn; a failure is an outcome too."""
    outcomes = []
    for key, params, upstream in items:
        started = time.perf_counter()
        try:
            fields = {"status": "done", **evaluate_stage(run_dir, evals, params, upstream)}
        except Exception as err:  # as in Runner._run_stage: recorded, and the other evaluations still run
            if not isinstance(err, MaebenchError):
                traceback.print_exc()
            fields = {"status": "failed", "error": _error_text(err)}
        outcomes.append((key, {**fields, "seconds": round(time.perf_counter() - started, 1)}))
    return outcomes


def _group_outcomes(future, stages: list[Stage]) -> list[tuple[str, dict[str, Any]]]:
    """A work item's outcomes; a worker that died (killed, out of memory) fails each of its stages."""
    try:
        return future.result()
    except Exception as err:
        return [(stage.key, {"status": "failed", "error": f"evaluation worker died: {_error_text(err)}"})
                for stage in stages]


def _error_text(err: BaseException) -> str:
    return str(err) if isinstance(err, MaebenchError) else f"{type(err).__name__}: {err}"


def _wait_for_child(process: subprocess.Popen, tick: Callable[[], None] | None = None) -> int:
    """The child's exit status (`tick` is called every second meanwhile). On Ctrl-C (which the child receives too)
    give it time to stop cleanly (its last checkpoint is intact either way: checkpoints are written atomically),
    then re-raise. On SIGTERM (which the child did not receive) stop the child first."""
    from maebench.lifetime import Terminated

    try:
        while True:
            try:
                return process.wait(timeout=1.0 if tick else None)
            except subprocess.TimeoutExpired:
                tick()
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, Terminated):
            process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def _calibrated_steps(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["max_steps"]) if path.exists() else None
    except (OSError, ValueError, KeyError):
        return None


def stage_log(name: str) -> str:
    """A pretraining stage's log (its child process's whole output), relative to the run directory."""
    return f"pretrain/{name}.log"


def init_dir(run_dir: Path, name: str) -> Path:
    from maebench.upstream.checkpoint import RUN_INIT

    return run_dir / "pretrain" / name / RUN_INIT


def pretrain_config(spec: PretrainStage, run_dir: Path):
    """The PretrainConfig of a stage: defaults < its recipe < data < its `set` overrides; run_dir fixed."""
    from maebench.config import PretrainConfig, apply_overrides, load_recipe

    cfg = load_recipe(spec.recipe) if spec.recipe else PretrainConfig()
    flags = [f"data.source={spec.data}"] if spec.data else []
    cfg = apply_overrides(cfg, flags, origin="pipeline data")
    cfg = apply_overrides(cfg, list(spec.set))
    cfg.run_dir = str(run_dir)
    return cfg


def _config_dict(cfg) -> dict[str, Any]:
    from maebench.config import to_dict

    return to_dict(cfg)


def training_speed(run_dir: Path, batch_size: int) -> dict[str, float | None]:
    """Step time (median over logging windows, the first one, with start-up, left out), clips/s and the loss
    curve, from RUN/metrics.jsonl: the whole run, including parts trained before an interruption.

    The loss curve is [step, loss, seconds]: seconds of training wall-clock time up to that step (the sum of the
    logging windows' durations, so a resumed run's time adds up and the time between attempts does not count),
    the x axis on which models of different step times compare fairly."""
    records = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    per_step, previous, seconds, curve = [], 0, 0.0, []
    for record in records:
        steps = record["step"] - previous
        window_s = record["clips"] / record["clips_per_s"] if record.get("clips_per_s") else 0.0
        if steps > 0 and window_s and previous > 0:
            per_step.append(window_s / steps)
        seconds += window_s
        curve.append([record["step"], record["loss"], round(seconds, 3)])
        previous = record["step"]
    step_s = statistics.median(per_step) if per_step else None
    return {"step_s": step_s, "clips_per_s": batch_size / step_s if step_s else None,
            "steps": records[-1]["step"] if records else 0,
            "loss_curve": curve}


def _time_estimates(stages: list[Stage], pretrain: dict[str, PretrainStage], jobs: int = 1) -> dict[str, float]:
    """Rough seconds per stage for the overall bar's ETA: a pretraining stage its budget plus start-up, an
    evaluation 8 s (toy tasks on a CPU) shared by the `jobs` running at once, the others a few seconds."""
    def guess(stage: Stage) -> float:
        if stage.kind == "pretrain":
            return (pretrain[stage.params["name"]].budget_seconds or 60.0) + 20.0
        return 8.0 / jobs if stage.kind == "eval" else 3.0

    return {s.key: guess(s) for s in stages}


# ---------------------------------------------------------------------------------------------------- dry run


def describe_plan(runner: Runner) -> str:
    """The plan as text: each stage, whether it is done, its estimated GPU hours, and the total still to run."""
    lines = [f"plan of {runner.recipe_path.stem} in {runner.run_dir}:"]
    todo = 0.0
    for stage in runner.stages:
        done = runner.manifest.is_done(stage.key)
        todo += 0.0 if done else stage.gpu_hours
        extra = ""
        if stage.kind == "pretrain":
            extra = f"  {runner.pretrain_summary(stage.params['name'])}"
        elif stage.kind == "eval":
            extra = f"  seeds {stage.params['seeds']}"
        lines.append(f"  [{'done' if done else 'todo'}] {stage.key:<44} {stage.gpu_hours:8.1f} GPU h{extra}")
    lines.append(f"estimated GPU hours still to run: {todo:.1f} (one GPU; estimates from the recipe)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the child


def _child(job_path: Path) -> None:
    """One pretraining stage in its own process: the step budget, then training (which saves the random init)."""
    from maebench.config import from_dict
    from maebench.trainer import train

    job = json.loads(job_path.read_text())
    cfg = from_dict(job["config"], origin=str(job_path))
    main = int(os.environ.get("RANK", "0")) == 0  # under DDP (a cluster job, several GPUs) rank 0 writes files
    resume = False
    if job["budget_seconds"]:
        calibration = Path(job["calibration"])
        if not calibration.exists():
            measured = _calibrate(cfg, job)  # under DDP every rank trains the timed steps; rank 0 writes
            if main:
                write_text_atomic(calibration, json.dumps(measured, indent=2) + "\n")
            _wait_for_file(calibration)
        cfg.train.max_steps = json.loads(calibration.read_text())["max_steps"]
        cfg.train.ckpt_every = max(1, min(cfg.train.ckpt_every, cfg.train.max_steps // 4))
        resume = True  # the first steps ran with max_steps = the timed steps: continue them
    result = train(cfg, quiet=job["quiet"], threads=job["threads"], resume=resume, set_latest=False)
    fields = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("losses", "skipped")}
    if main:
        write_text_atomic(job["result"], json.dumps(fields, indent=2, default=str) + "\n")


def _wait_for_file(path: Path, timeout_s: float = 600.0) -> None:
    """Another rank's file (rank 0 writes it when the collective steps end): wait for it to appear."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise MaebenchError(f"{path} did not appear in {timeout_s:g} s (rank 0 writes it): see rank 0's log")
        time.sleep(0.5)


def _calibrate(cfg, job: dict[str, Any]) -> dict[str, Any]:
    """The run's own first `calibration_steps` steps (inside the lr warm-up, so they are the steps of the full
    schedule too), timed on the real data and machine: max_steps = budget / their median step time."""
    from maebench.trainer import train
    from maebench.upstream.checkpoint import latest_checkpoint

    first = copy.deepcopy(cfg)
    timed = max(2, min(job["calibration_steps"], cfg.optim.warmup_steps or job["calibration_steps"]))
    first.train.max_steps = timed
    first.train.ckpt_every = min(cfg.train.ckpt_every, timed)
    resume = latest_checkpoint(cfg.default_run_dir(), resumable=True) is not None  # an interrupted calibration
    result = train(first, quiet=job["quiet"], threads=job["threads"], resume=resume, set_latest=False)
    step_s = training_speed(cfg.default_run_dir(), cfg.train.batch_size)["step_s"]
    step_s = step_s or result.wall_s / max(1, result.steps - result.start_step)  # no window past the first
    steps = max(10, timed, int(job["budget_seconds"] / step_s))  # 10: a loss curve, however short the budget
    return {"budget_seconds": job["budget_seconds"], "timed_steps": timed, "step_s": step_s, "max_steps": steps}


if __name__ == "__main__":
    from maebench.lifetime import die_with_parent

    die_with_parent()  # a killed `maebench run` takes its pretraining with it
    try:
        _child(Path(sys.argv[1]))
    except MaebenchError as err:
        print(f"maebench: error: {err}", file=sys.stderr)
        write_text_atomic(json.loads(Path(sys.argv[1]).read_text())["error"], f"{err}\n")  # for the manifest
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
