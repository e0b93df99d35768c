"""Benchmark the pretraining data loaders: delivered 10 s clips per second, torch DataLoader vs fairseq2.

Writes --clips clips of --seconds each in three formats (16 kHz FLAC, 16 kHz WAV, 44.1 kHz FLAC, which both
loaders resample to 16 kHz), then for each loader and core count (1, 2 and every core this process may use by
default) runs one measurement in a fresh process pinned to that many cores (so thread pools size themselves to
them): the torch loader with that many worker processes, the fairseq2 loader with that many decoding threads,
both delivering the trainer's batches (MAE-AST: whole clips up to --seconds, cropped to each batch's shortest).
The figure is clips/s over --batches batches (the clips cycled), timed from building the loader to its last
batch, start-up included, the best of --repeats passes. Printed: clips/s, clips/s per core, and the
fairseq2/torch ratio. The machine's load average is printed too: on shared cores the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FORMATS = {  # name -> (file suffix, sample rate, soundfile subtype)
    "flac16k": (".flac", 16000, "PCM_16"),
    "wav16k": (".wav", 16000, "PCM_16"),
    "flac44k": (".flac", 44100, "PCM_16"),
}
LOADERS = ("torch", "fairseq2")
TARGET_PER_CORE = 250.0  # clips/s per core of 16 kHz FLAC a GPU training MAE-AST at full speed needs (issue 12)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=64, help="clips per format (default 64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch (default 16)")
    parser.add_argument("--cores", metavar="N,N,...",
                        help="core counts to measure (default 1,2 and every core this process may use)")
    parser.add_argument("--format", dest="formats", action="append", choices=sorted(FORMATS),
                        help="formats to measure (repeatable; default all three)")
    parser.add_argument("--loader", dest="loaders", action="append", choices=LOADERS,
                        help="loaders to measure (repeatable; default both)")
    parser.add_argument("--batches", type=int, default=40,
                        help="batches delivered per pass, the clips cycled (default 40)")
    parser.add_argument("--repeats", type=int, default=2, help="passes per measurement, best kept (default 2)")
    parser.add_argument("--dir", metavar="DIR", help="where to write the clips (default: a temporary folder)")


def available_cores() -> list[int]:
    """The CPU ids this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def core_counts(spec: str | None) -> list[int]:
    """--cores as a sorted list of distinct counts, each within the cores available."""
    from maebench.errors import MaebenchError

    total = len(available_cores())
    if spec is None:
        return sorted({1, min(2, total), total})
    try:
        counts = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise MaebenchError(f"--cores {spec!r}: give core counts separated by commas, e.g. 1,2,16") from None
    if not counts or counts[0] < 1 or counts[-1] > total:
        raise MaebenchError(f"--cores {spec!r}: each count must be between 1 and the {total} cores available")
    return counts


def write_clips(folder: Path, fmt: str, count: int, seconds: float) -> list[Path]:
    """`count` speech-like clips of `seconds` in format `fmt`, written once: a clip already there is reused only
    when it has that length and rate (a --dir written with another --seconds would mislabel the table)."""
    import soundfile

    from maebench.commands.bench_fbank import speech_like_batch

    suffix, rate, subtype = FORMATS[fmt]
    folder = folder / fmt
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip_{i:04d}{suffix}" for i in range(count)]
    samples = round(seconds * rate)
    for start in range(0, count, 16):
        todo = [p for p in paths[start:start + 16] if not _has_shape(p, rate, samples)]
        if not todo:
            continue
        batch = speech_like_batch(len(todo), samples, rate, seed=start + rate).numpy()
        for path, wav in zip(todo, batch, strict=True):
            tmp = path.with_name(f".{path.name}.tmp{suffix}")
            soundfile.write(str(tmp), wav, rate, subtype=subtype)
            os.replace(tmp, path)
    return paths


def _has_shape(path: Path, rate: int, samples: int) -> bool:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (OSError, RuntimeError):  # missing, or not audio (soundfile's LibsndfileError is a RuntimeError)
        return False
    return info.samplerate == rate and info.frames == samples


def measure(paths: list[str], loader: str, workers: int, batch_size: int, seconds: float, repeats: int,
            batches: int) -> float:
    """Clips/s one loader delivers in `batches` batches cut from `paths` (cycled), best of `repeats` passes.

    Timed from building the loader to its last batch, start-up included (the trainer pays it every epoch); many
    batches per pass, so read-ahead (prefetching) cannot hide a loader's real rate.
    """
    import time

    import torch

    from maebench.manifest import AudioItem

    torch.set_num_threads(1)  # resampling in the loader: one thread per worker, as DataLoader workers have
    if loader == "fairseq2":
        from maebench.fairseq2_data import build_fairseq2_loader as build
    else:
        from maebench.pretrain_data import build_pretrain_loader as build
    items = [AudioItem(Path(paths[i % len(paths)])) for i in range(batches * batch_size)]
    best = 0.0
    for repeat in range(repeats):
        start, clips = time.perf_counter(), 0
        for batch in build(items, clip_seconds=seconds, batch_size=batch_size, num_workers=workers, seed=repeat,
                           crop_to_shortest=True):
            clips += len(batch)
        best = max(best, clips / (time.perf_counter() - start))
    return best


def _child() -> None:
    """Entry point of one measurement process: pin to the first N cores, then measure; prints a JSON number."""
    job = json.loads(sys.argv[1])
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, available_cores()[: job["cores"]])
    print(json.dumps(measure(job["paths"], job["loader"], job["cores"], job["batch_size"], job["seconds"],
                             job["repeats"], job["batches"])))


def _run_child(job: dict) -> float:
    import subprocess

    from maebench.errors import MaebenchError

    code = "from maebench.commands.bench_data import _child; _child()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(job)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MaebenchError(f"bench data: the {job['loader']} measurement on {job['cores']} core(s) failed ({last})")
    return float(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    import tempfile

    from rich.console import Console

    from maebench.errors import MaebenchError
    from maebench.fairseq2_data import INSTALL_HINT, fairseq2_available
    from maebench.tables import new_table, print_table

    if min(args.clips, args.batch_size, args.batches, args.repeats) < 1 or args.seconds <= 0:
        raise MaebenchError("bench data needs --clips, --batch-size, --batches and --repeats >= 1 and --seconds > 0")
    loaders = args.loaders or list(LOADERS)
    if "fairseq2" in loaders and not fairseq2_available():
        raise MaebenchError(f"bench data: {INSTALL_HINT}")
    counts, formats = core_counts(args.cores), args.formats or list(FORMATS)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="maebench-bench-data-") as scratch:
        folder = Path(args.dir) if args.dir else Path(scratch)
        results: dict[tuple[str, str, int], float] = {}
        for fmt in formats:
            paths = [str(p) for p in write_clips(folder, fmt, args.clips, args.seconds)]
            for cores in counts:
                for loader in loaders:
                    job = dict(paths=paths, loader=loader, cores=cores, batch_size=args.batch_size,
                               seconds=args.seconds, repeats=args.repeats, batches=args.batches)
                    results[fmt, loader, cores] = _run_child(job)
    ratio = ["fairseq2 / torch"] if len(loaders) == 2 else []
    table = new_table(f"delivered {args.seconds:g} s clips/s ({args.batches} batches of {args.batch_size} "
                      f"from {args.clips} clips, start-up included)",
                      ("format", "cores", *(f"{name} clips/s" for name in loaders),
                       *(f"{name} /core" for name in loaders), *ratio), names=2)
    for fmt in formats:
        for cores in counts:
            speeds = [results[fmt, loader, cores] for loader in loaders]
            cells = [fmt, str(cores), *(f"{s:.0f}" for s in speeds), *(f"{s / cores:.0f}" for s in speeds)]
            if len(loaders) == 2:
                cells.append(f"{speeds[1] / speeds[0]:.2f}x" if speeds[0] > 0 else "-")
            table.add_row(*cells)
    print_table(table, console)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    note = f"load average {load[0]:.1f} on {len(available_cores())} core(s)" if load else ""
    console.print(f"target: {TARGET_PER_CORE:.0f} clips/s per core of 16 kHz FLAC from the faster loader; {note}")
    return 0
