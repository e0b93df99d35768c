"""Eager vs compiled pretraining steps of MAE-AST and SSAST on variable-length batches (a script, not a test).

For each family, two copies of one model (same weights) train on the same stream of batches whose clip lengths
change every step, with the paper recipes' layerdrop (MAE-AST 0.05) and masks; every step reseeds the global RNG
for both copies alike, so they draw the same masks and layerdrop patterns. The compiled copy has its transformer
blocks compiled as `train.compile` does (maebench.upstream.blocks.compile_blocks). MAE-AST batches are cropped to
their shortest clip (the recipes' batch_length: shortest), so its sequence length changes every step; SSAST pads or
cuts every clip to target_frames (batch_length: fixed). The two copies alternate step by step, so load from other
work on the machine falls on both alike: compare the ratio, measured in one run, not times across runs.

Printed per family, from torch's own records (torch._dynamo.utils.counters and its compilation metrics): frames
compiled, recompilations (a frame compiled again after its guards failed), graphs, graph breaks, compilations after
warm-up and dynamo's compile seconds; the first compiled step's seconds (compilation included); the median
steady-state step time, eager and compiled, and their ratio, by wall clock and by the process's CPU time.
Defaults: CUDA = base, batch 32, 2-15.6 s clips (SSAST 10.24 s), bf16; CPU = tiny, batch 4, 1-4 s (SSAST 2.56 s),
fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

from maebench.commands.bench_pretrain import _at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=("tiny", "small", "base"), help="model size (CUDA: base, CPU: tiny)")
    parser.add_argument("--batch", type=_at_least(1), help="clips per step (CUDA: 32, CPU: 4)")
    parser.add_argument("--steps", type=_at_least(1), help="timed steps per copy (CUDA: 30, CPU: 12)")
    parser.add_argument("--warmup", type=_at_least(1), help="untimed steps first, compilation included (default 2)")
    parser.add_argument("--min-seconds", type=float, help="shortest clip (CUDA: 2, CPU: 1)")
    parser.add_argument("--max-seconds", type=float, help="longest clip (CUDA: 15.625, CPU: 4)")
    parser.add_argument("--ssast-seconds", type=float, help="SSAST's fixed input length (CUDA: 10.24, CPU: 2.56)")
    parser.add_argument("--models", default="mae_ast,ssast", help="comma-separated families (default both)")
    parser.add_argument("--tokenizer", default="patch", choices=("patch", "frame"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto = bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor; aot_eager to debug)")
    parser.add_argument("--threads", type=_at_least(1), help="CPU threads (default: maebench's deterministic count)")


def run(args: argparse.Namespace) -> int:
    import torch

    from maebench.distributed import resolve_device
    from maebench.errors import MaebenchError
    from maebench.trainer import cpu_threads
    from maebench.upstream.frontend import SAMPLE_RATE, SSAST_FBANK, num_frames

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.size or ("base" if cuda else "tiny")
    batch = args.batch or (32 if cuda else 4)
    steps = args.steps or (30 if cuda else 12)
    warmup = args.warmup or 2
    shortest = args.min_seconds or (2.0 if cuda else 1.0)
    longest = args.max_seconds or (15.625 if cuda else 4.0)
    ssast_seconds = args.ssast_seconds or (10.24 if cuda else 2.56)
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    families = [name.strip() for name in args.models.split(",") if name.strip()]
    if not 0.2 <= shortest <= longest or any(name not in ("mae_ast", "ssast") for name in families):
        raise MaebenchError(f"bench compile: need 0.2 <= --min-seconds <= --max-seconds (got {shortest}, {longest}) "
                            f"and --models from mae_ast,ssast (got {args.models!r})")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(cpu_threads(args.threads))
    where = f"cuda ({torch.cuda.get_device_name(device)})" if cuda else f"cpu ({torch.get_num_threads()} thread(s))"
    print(f"maebench bench compile: {where}, torch {torch.__version__}, {size}, {args.tokenizer} tokens, batch "
          f"{batch}, {precision}, backend {args.backend}, {steps} timed steps per copy after {warmup} warm-up")
    ssast_frames = num_frames(round(ssast_seconds * SAMPLE_RATE), SSAST_FBANK)
    setups = {
        "mae_ast": (f"MAE-AST {args.tokenizer}", f"mae_ast_{args.tokenizer}:{size}", {}),
        # as the trainer builds it: target_frames = the clip length rounded up to whole 16-frame patches
        "ssast": (f"SSAST {args.tokenizer}", f"ssast_{args.tokenizer}:{size}",
                  {"target_frames": -(-ssast_frames // 16) * 16}),
    }
    print(f"MAE-AST clips {shortest:g}-{longest:g} s, each batch cropped to its shortest; SSAST clips "
          f"{shortest:g}-{longest:g} s padded or cut to {ssast_seconds:g} s")
    bench = _Bench(device, batch, round(shortest * SAMPLE_RATE), round(longest * SAMPLE_RATE),
                   torch.bfloat16 if precision == "bf16" else None, args.backend)
    rows = []
    for family in families:
        rows.append(bench.compare(*setups[family], steps=steps, warmup=warmup))
        _print_row(rows[-1], header=len(rows) == 1)
    print("frames: regions compiled; recompiles: a frame compiled again after its guards failed; after warm-up: "
          "frames compiled after the warm-up steps; compile s: dynamo's record of its frame compile time; first "
          "step s: the first compiled step, every compilation in it included; eager and compiled steps alternate, "
          "so their ratio holds on a loaded machine; CPU-time ratio: the same from the process's CPU time (on CPU, "
          "the steadier figure on a shared machine; on CUDA, host time only)")
    return 0


class _Bench:
    """One stream of variable-length batches, fed to an eager and a compiled copy of each model in turn."""

    def __init__(self, device, batch: int, shortest: int, longest: int, dtype, backend: str) -> None:
        self.device, self.batch, self.shortest, self.longest = device, batch, shortest, longest
        self.dtype, self.backend = dtype, backend

    def batch_at(self, index: int):
        """Batch `index` of the stream: clip lengths uniform in [shortest, longest] samples, zero-padded."""
        import torch

        generator = torch.Generator().manual_seed(index)
        lens = torch.randint(self.shortest, self.longest + 1, (self.batch,), generator=generator)
        wavs = 0.1 * torch.randn(self.batch, int(lens.max()), generator=generator)
        wavs = wavs * (torch.arange(wavs.shape[1]) < lens[:, None])
        return wavs.to(self.device), lens.to(self.device)

    def compare(self, label: str, preset: str, overrides: dict, *, steps: int, warmup: int) -> dict:
        import copy

        import torch
        from torch._dynamo.utils import clear_compilation_metrics, counters

        from maebench import upstream
        from maebench.upstream.blocks import compile_blocks

        torch._dynamo.reset()  # fresh caches and counters per family: the last model's graphs are not reused
        counters.clear()
        clear_compilation_metrics()
        torch.manual_seed(0)
        eager = upstream.load(preset, **overrides).to(self.device).train()
        compiled = copy.deepcopy(eager)
        compile_blocks(compiled, backend=self.backend)
        copies = {"eager": self._stepper(eager), "compiled": self._stepper(compiled)}
        times: dict[str, list[tuple[float, float]]] = {"eager": [], "compiled": []}
        after_warmup = None
        for index in range(warmup + steps):
            wavs, lens = self.batch_at(index)
            order = ("eager", "compiled") if index % 2 == 0 else ("compiled", "eager")
            for name in order:
                torch.manual_seed(1000 + index)  # the same masks and layerdrop pattern for both copies
                times[name].append(copies[name](wavs, lens))
            if index == warmup - 1:
                after_warmup = _compile_counts()
        final = _compile_counts()
        eager_s, eager_cpu = (statistics.median(column) for column in zip(*times["eager"][warmup:], strict=True))
        compiled_s, compiled_cpu = (statistics.median(column)
                                    for column in zip(*times["compiled"][warmup:], strict=True))
        return {"label": label, **final, "after_warmup": final["frames"] - after_warmup["frames"],
                "first_s": times["compiled"][0][0], "eager_s": eager_s, "compiled_s": compiled_s,
                "ratio": compiled_s / eager_s, "cpu_ratio": compiled_cpu / eager_cpu}

    def _stepper(self, model):
        """A function (wavs, lens) -> (wall, process CPU) seconds of one training step (forward, backward, AdamW)."""
        import contextlib

        import torch

        cuda = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
        dtype = self.dtype

        def step(wavs, lens) -> tuple[float, float]:
            if cuda:
                torch.cuda.synchronize(self.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            with torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                loss = model.pretrain_loss(wavs, lens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - start, time.process_time() - cpu_start

        return step


def _compile_counts() -> dict[str, float]:
    """torch's own compile records since the last reset: frames compiled (counters["frames"]), graphs, graph breaks,
    and per frame compilation (dynamo's compilation metrics) whether it was a recompilation and its seconds."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    frames = [m for m in get_compilation_metrics() if m.entire_frame_compile_time_s is not None]
    return {"frames": counters["frames"]["ok"],
            "recompiles": sum(m.recompile_reason is not None for m in frames),
            "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "compile_s": sum(m.entire_frame_compile_time_s for m in frames)}


def _print_row(row: dict, *, header: bool) -> None:
    if header:
        print(f"{'model':<14} {'frames':>6} {'recompiles':>10} {'graphs':>6} {'breaks':>6} {'after warm-up':>13} "
              f"{'compile s':>9} {'first step s':>12} {'eager ms':>9} {'compiled ms':>11} {'compiled/eager':>14} "
              f"{'CPU-time ratio':>14}")
    print(f"{row['label']:<14} {row['frames']:>6} {row['recompiles']:>10} {row['graphs']:>6} {row['graph_breaks']:>6} "
          f"{row['after_warmup']:>13} {row['compile_s']:>9.1f} {row['first_s']:>12.1f} {1000 * row['eager_s']:>9.1f} "
          f"{1000 * row['compiled_s']:>11.1f} {row['ratio']:>14.2f} {row['cpu_ratio']:>14.2f}")
