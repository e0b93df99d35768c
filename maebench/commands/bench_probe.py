"""What a probe curve costs a pretraining run, and whether it survives kill -9 (a script, not a test).

Runs the same pretraining (the demo size by default: `maebench pretrain` defaults, 600 steps) in fresh run
directories under --out, each as its own `maebench pretrain` process: without probes, with `--probe-every N
--probe-tasks T` (default every 100 steps on ks2,esc50: the issue's setting), and again with probes but killed
with SIGKILL once the run is past its first checkpoint, then resumed by the same command. Prints the training
throughput of both runs (clips over the seconds of their logging windows, and over each process's whole wall
time), the ratio, what a point costs (seconds and CPU seconds in the probe process) and the probe process's share
of the run's wall time, the points each curve has (a run leaves what its 10% end-of-run wait could not cover
pending: `maebench probe` finishes those here, timed) and whether the killed-and-resumed curve equals the
uninterrupted one. The toy data of the tasks is built before timing. Timings share the machine with whatever else
runs on it: compare the ratios.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=600,
                        help="optimizer steps per run (default 600, `maebench pretrain`'s demo-sized default)")
    parser.add_argument("--every", type=int, default=100, help="probe every N steps (default 100)")
    parser.add_argument("--tasks", default="ks2,esc50", help="probe tasks (default ks2,esc50)")
    parser.add_argument("--threads", type=int, default=1, help="training threads (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra `maebench pretrain --set` overrides for every run")
    parser.add_argument("--repeats", type=int, default=2,
                        help="pairs of runs without / with probes, alternated so both see the same machine load "
                             "(default 2); the ratio is over their summed clips and seconds")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 + resume run")
    parser.add_argument("--out", default="runs/bench_probe", help="parent of the run directories")


def _pretrain(run_dir, args, probes: bool, kill_after_step: int | None = None) -> dict:
    """One `maebench pretrain` process; SIGKILLed once metrics.jsonl passes `kill_after_step`."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "maebench", "pretrain", "--run-dir", str(run_dir), "--max-steps",
               str(args.steps), "--threads", str(args.threads), "--quiet"]
    command += [item for o in args.overrides for item in ("--set", o)]
    if probes:
        command += ["--probe-every", str(args.every), "--probe-tasks", args.tasks]
    started = time.perf_counter()
    # output to a file, not a pipe: a data-loading child of a killed run can outlive it holding a pipe open
    log = run_dir.parent / f"{run_dir.name}.{'resumed' if (run_dir / 'config.yaml').exists() else 'first'}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        if kill_after_step is not None:
            metrics = run_dir / "metrics.jsonl"
            while process.poll() is None:
                lines = metrics.read_text().splitlines() if metrics.exists() else []
                steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
                if steps and steps[-1] >= kill_after_step:
                    os.kill(process.pid, signal.SIGKILL)
                    break
                time.sleep(0.2)
        process.wait()
    if kill_after_step is not None:
        time.sleep(10)  # the probe worker notices its run is gone and exits on its own
        try:  # what is left of the killed run's processes: a DataLoader worker stuck writing to its dead parent
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"wall_s": time.perf_counter() - started, "code": process.returncode, "output": log.read_text()}


def _throughput(run_dir) -> tuple[float, float]:
    """(clips, seconds) of training: the logging windows' clips and seconds (start-up and the end-of-run wait for
    probes left out; snapshot writes, which happen inside windows, counted)."""
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(r["clips"] for r in records), sum(r["clips"] / r["clips_per_s"] for r in records)


def _print_probe_cost(live: list[dict], wall_s: float, args: argparse.Namespace) -> None:
    """Seconds per point and the probe process's CPU share, from the points written while the runs trained."""
    import os

    if not live:
        print("probe cost: no point was written during the probe runs (every core busy: see the pending steps)")
        return
    per_point = sum(p["probe_s"] for p in live) / len(live)
    cpu = sum(p["probe_cpu_s"] for p in live)
    spare_core = " (on a core training does not use)" if args.threads < (os.cpu_count() or 1) else ""
    print(f"probe cost: {len(live)} points written during the {args.repeats} probe run(s), {per_point:.2f} s "
          f"({cpu / len(live):.2f} CPU s) per point in the probe process; its CPU time = "
          f"{100 * cpu / wall_s:.1f}% of the runs' wall time{spare_core}")


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    from maebench.downstream.datasets import task_root
    from maebench.errors import MaebenchError
    from maebench.probe_curve import pending_snapshots, read_points

    tasks = [t for t in args.tasks.split(",") if t]
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for task in tasks:
        task_root(task, None)  # build the toy data before anything is timed
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start "
          f"(other work shares these cores: compare the ratios, not the absolute figures)")
    clips, seconds, wall = {"plain": 0.0, "probes": 0.0}, {"plain": 0.0, "probes": 0.0}, {"plain": 0.0, "probes": 0.0}
    live = []  # the points the probe runs' workers wrote while their run was going
    for repeat in range(args.repeats):
        for name in ("plain", "probes"):
            path = out / f"{name}{repeat}"
            result = _pretrain(path, args, probes=name == "probes")
            if result["code"] != 0:
                raise MaebenchError(f"the {name} run failed ({result['code']}): {result['output'][-500:]}")
            run_clips, run_seconds = _throughput(path)
            live += read_points(path) if name == "probes" else []
            clips[name] += run_clips
            seconds[name] += run_seconds
            wall[name] += result["wall_s"]
            line = result["output"].strip().splitlines()[-1] if name == "probes" else ""
            print(f"pair {repeat + 1} {name}: {run_clips / run_seconds:.2f} clips/s, {result['wall_s']:.1f} s wall, "
                  f"load {os.getloadavg()[0]:.1f}" + (f"\n  {line}" if line.startswith("probes:") else ""),
                  flush=True)
    runs = {"plain": out / "plain0", "probes": out / "probes0"}
    speed = {name: clips[name] / seconds[name] for name in clips}
    print(f"training throughput: {speed['plain']:.2f} clips/s without probes, {speed['probes']:.2f} with "
          f"(ratio {speed['probes'] / speed['plain']:.3f}, drop {100 * (1 - speed['probes'] / speed['plain']):.1f}%)")
    print(f"process wall time: {wall['plain']:.1f} s without, {wall['probes']:.1f} s with (ratio "
          f"{wall['probes'] / wall['plain']:.3f}, start-up and the end-of-run wait for probes included)")
    _print_probe_cost(live, wall["probes"], args)
    expected = len(range(0, args.steps + 1, args.every)) + (args.steps % args.every != 0)
    during = len(read_points(runs["probes"]))
    pending = [step for step, _ in pending_snapshots(runs["probes"])]
    started = time.perf_counter()
    finish = [sys.executable, "-m", "maebench", "probe", str(runs["probes"]), "--quiet"]
    subprocess.run(finish, check=True, capture_output=True)
    final = len(read_points(runs["probes"]))
    print(f"curve: {during} of {expected * len(tasks)} points written while training (pending steps: "
          f"{pending or 'none'}); after `maebench probe` ({time.perf_counter() - started:.1f} s): {final} -> "
          f"{'every point arrived' if final == expected * len(tasks) else 'POINTS MISSING'}")
    if args.no_kill:
        return 0
    killed = out / "killed"
    first = _pretrain(killed, args, probes=True, kill_after_step=min(args.steps - 1, args.every + args.every // 2))
    second = _pretrain(killed, args, probes=True)
    if second["code"] != 0:
        raise MaebenchError(f"the resumed run failed: {second['output'][-500:]}")
    subprocess.run([sys.executable, "-m", "maebench", "probe", str(killed), "--quiet"], check=True,
                   capture_output=True)
    curve = {(p["step"], p["task"]): p["score"] for p in read_points(runs["probes"])}
    resumed_points = read_points(killed)
    resumed = {(p["step"], p["task"]): p["score"] for p in resumed_points}
    duplicates = len(resumed_points) - len(resumed)
    print(f"kill -9 (exit {first['code']}) + resume: {len(resumed)} points, {duplicates} duplicate(s), "
          f"{'the same curve' if resumed == curve else 'A DIFFERENT CURVE'} as the uninterrupted run")
    if resumed != curve:
        for key in sorted(set(curve) | set(resumed)):
            print(f"  step {key[0]} {key[1]}: uninterrupted {curve.get(key)}, resumed {resumed.get(key)}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if resumed == curve else 1
