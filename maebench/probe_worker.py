"""The probe process beside a pretraining run: it turns RUN/probe_snapshots/ into points of RUN/probes.jsonl.

The training loop never waits for a probe (maebench.probe_curve): at a probe step it writes a snapshot of the
encoder (a small native checkpoint; the queue is that folder, so it survives a crash) and goes on. This process
(`python -m maebench.probe_worker RUN`) probes the snapshots oldest first. How its cost stays under 10% of the
run's wall time on a 2-core machine: it runs one thread (torch, BLAS) at nice 19. Where a core is idle (training
with one thread, or between data-loading waits) it takes that core and costs training nothing; where it shares a
core with a training thread, Linux's CFS scheduler splits that core by weight, 15 (nice 19) against 1024 (nice 0),
so it gets at most 15 / 1039 = 1.4% of it (nice 10's 110 / 1134 = 9.7% left no margin under the 10% target;
`maebench bench probe` measures it). On a machine whose every core is busy the points therefore lag. The training
loop itself only writes the snapshots (milliseconds for the small models) and, at the end of the run, waits for
the last points at most `train.probe_max_share` (10%) of the run's wall time less what snapshots cost; what is left
stays in RUN/probe_snapshots/ for the resumed run or `maebench probe RUN` to finish.

A worker that dies is reported and restarted (up to MAX_RESTARTS times); one that stops on a user error (bad
task data: exit status 2) is reported once, with its message. Training never stops because of a probe.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from maebench import probe_curve as pc
from maebench.errors import MaebenchError

WORKER_SPEC = "worker.json"  # RUN/probe_snapshots/worker.json: what to probe (the CurveSpec)
STOP_FILE = "STOP"  # written by the training process: probe what is pending, then exit
LOCK_FILE = pc.WORKER_LOCK  # one worker per run (a worker orphaned by a killed run finishes before the next starts)
LOG_FILE = "worker.log"
MAX_RESTARTS = 3
POLL_S = 0.5
USER_ERROR = 2
NICE = 19  # CFS weight 15 against a nice-0 training thread's 1024: at most 1.4% of a core they share


# ---------------------------------------------------------------------------------------------------- the process


def work(run_dir: Path, parent: int) -> int:
    """The worker's life: take the run's worker lock, then probe snapshots as they come until told to stop (or
    the training process `parent` is gone: a point finished after that is not written). The parent's pid comes
    from the parent itself: one that died while this process was still importing torch would leave os.getppid()
    pointing at init from the start, and the worker polling forever with the lock a resumed run's worker waits for."""
    import torch

    torch.set_num_threads(1)
    print(f"probe worker started (pid {os.getpid()}, nice {os.nice(0)}, {torch.get_num_threads()} thread)", flush=True)
    root = run_dir / pc.SNAPSHOTS_DIR
    job = json.loads((root / WORKER_SPEC).read_text())
    spec = pc.CurveSpec.from_json(job["spec"])
    with open(root / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a worker a killed run left behind (it writes nothing more)

        def wanted() -> bool:
            return os.getppid() == parent

        while wanted():
            pending = pc.pending_snapshots(run_dir)
            if pending:
                step, path = pending[0]
                for point in pc.probe_snapshot(run_dir, step, path, spec, still_wanted=wanted):
                    print(f"step {point['step']} {point['task']}: {point['score']:.2f} ({point['probe_s']:.1f} s)",
                          flush=True)
            elif (root / STOP_FILE).exists():
                return 0
            else:
                time.sleep(POLL_S)
    return 0


def _lowest_priority() -> None:
    """Runs in the child before exec: the probe process yields the CPU to training (see the module docstring)."""
    os.nice(NICE)


# ---------------------------------------------------------------------------------------------------- the handle


class ProbeWorker:
    """The training process's side (rank 0): snapshots at probe steps, the worker's health, the end-of-run wait."""

    def __init__(self, run_dir: Path, spec: pc.CurveSpec, *, every: int, max_steps: int, start_step: int,
                 max_share: float, quiet: bool = False) -> None:
        pc.check_tasks(spec.tasks)
        self.run_dir, self.spec, self.every, self.max_steps = Path(run_dir), spec, every, max_steps
        self.max_share, self.quiet = max_share, quiet
        self.root = self.run_dir / pc.SNAPSHOTS_DIR
        self.blocked_s, self.restarts, self.failed = 0.0, 0, None
        self.seen = 0  # points already handed to TensorBoard
        self.process: subprocess.Popen | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STOP_FILE).unlink(missing_ok=True)
        pc.drop_snapshots_after(self.run_dir, start_step)  # a resumed run redoes the steps past its checkpoint
        pc.keep_points_until(self.run_dir, start_step)
        from maebench.atomic import write_text_atomic

        write_text_atomic(self.root / WORKER_SPEC, json.dumps({"spec": spec.to_json()}))
        self.session_start = time.time()
        self._start()

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(self.root / LOG_FILE, "a") as log:
            command = [sys.executable, "-m", "maebench.probe_worker", str(self.run_dir), str(os.getpid())]
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, preexec_fn=_lowest_priority)

    def after_step(self, step: int, model) -> None:
        """At a probe step (0, every N-th, the last): write the snapshot the worker will probe. Never raises."""
        if step % self.every and step != self.max_steps:
            return
        started = time.perf_counter()
        try:
            missing = [t for t in self.spec.tasks if (step, t) not in pc.done_points(self.run_dir)]
            if missing and not pc.snapshot_dir(self.run_dir, step).is_dir():
                pc.write_snapshot(model, self.run_dir, step)
        except (OSError, MaebenchError) as err:
            self._note(f"probe snapshot of step {step} not written ({err}); training goes on")
        self.blocked_s += time.perf_counter() - started
        self.check()

    def check(self) -> None:
        """Report a worker that died; restart it unless it stopped on a user error or was restarted too often."""
        if self.process is None or self.process.poll() is None or self.failed:
            return
        code = self.process.returncode
        if code == 0 and (self.root / STOP_FILE).exists():
            return
        reason = self._last_log_line() or f"exit status {code}"
        if code == USER_ERROR or self.restarts >= MAX_RESTARTS:
            self.failed = f"probe worker stopped ({reason})"
            self._note(f"{self.failed}; training goes on, the snapshots wait in {self.root} for "
                       f"`maebench probe {self.run_dir}`")
            return
        self.restarts += 1
        self._note(f"probe worker died ({reason}); restarting it ({self.restarts}/{MAX_RESTARTS})")
        self._start()

    def new_points(self) -> list[dict[str, Any]]:
        """Points that arrived since the last call (for TensorBoard)."""
        points = pc.read_points(self.run_dir)
        fresh, self.seen = points[self.seen:], len(points)
        return fresh

    def finish(self, wall_s: float) -> dict[str, Any]:
        """Tell the worker to stop after the pending snapshots; wait for it within the probe budget (what is left
        stays pending); the run's probe cost."""
        started = time.perf_counter()
        (self.root / STOP_FILE).touch()
        budget = max(0.0, self.max_share * wall_s - self.blocked_s)
        while self.process is not None and self.process.poll() is None and time.perf_counter() - started < budget:
            time.sleep(0.1)
            self.check()
        self.check()
        self.stop()
        self.blocked_s += time.perf_counter() - started
        points = [p for p in pc.read_points(self.run_dir) if p.get("wall_time", 0) >= self.session_start]
        summary = pc.cost_summary(points, wall_s + time.perf_counter() - started, self.blocked_s)
        summary["pending_snapshots"] = [step for step, _ in pc.pending_snapshots(self.run_dir)]
        summary["worker"] = self.failed or "ok"
        summary["restarts"] = self.restarts
        return summary

    def stop(self) -> None:
        """End the worker now (a run that stops, or the budget spent); its snapshots stay for later."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _last_log_line(self) -> str:
        try:
            lines = (self.root / LOG_FILE).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip()[:300] if lines else ""

    def _note(self, message: str) -> None:
        print(f"note: {message}", file=sys.stderr, flush=True)


def start_probes(cfg, run_dir: Path, start_step: int, *, quiet: bool = False) -> ProbeWorker:
    """Rank 0's probe worker for a run configured with train.probe_every (and train.probe_tasks)."""
    t = cfg.train
    return ProbeWorker(run_dir, pc.CurveSpec.from_config(cfg), every=t.probe_every, max_steps=t.max_steps,
                       start_step=start_step, max_share=t.probe_max_share, quiet=quiet)


def describe(summary: dict[str, Any], run_dir: Path) -> str:
    """The run summary's probe line."""
    if not summary["points"]:
        line = "probes: no point finished in this session"
    else:
        line = (f"probes: {summary['points']} point(s), {summary['probe_s_per_point']:.1f} s each in the probe "
                f"process (nice {NICE}, 1 thread); the loop waited {summary['loop_blocked_s']:.1f} s "
                f"({100 * (summary['blocked_share'] or 0):.1f}% of wall time) -> {run_dir / pc.PROBES_FILE}")
    if summary["pending_snapshots"]:
        line += (f"; steps {', '.join(map(str, summary['pending_snapshots']))} still to probe: `maebench probe "
                 f"{run_dir}` (or resuming the run) finishes them")
    if summary["worker"] != "ok":
        line += f"; {summary['worker']}"
    return line


def main(argv: list[str]) -> int:
    try:
        return work(Path(argv[0]), int(argv[1]) if len(argv) > 1 else os.getppid())
    except MaebenchError as err:
        print(f"maebench: error: {err}", flush=True)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
