"""Time pretraining steps of MAE-AST against two-pass and one-pass SSAST on the same batch (a script, not a test).

Each model trains on one fixed random batch: forward (filterbank included), backward and an AdamW step, after
untimed warm-up steps, with the device synchronised around the timed loop. Prints step time, clips/s, peak memory
(CUDA), model-FLOPs utilisation (CUDA: the models' own pretrain_flops over the GPU's dense bf16 peak, so bf16 runs
only unless --peak-tflops is given) and the MAE-AST speed and memory ratios. Defaults: CUDA = ViT-B, 1024 frames,
batch 128, bf16; CPU = tiny, 256 frames.
"""

from __future__ import annotations

import argparse

# Dense bf16 tensor-core peaks (FLOP/s) by a substring of torch.cuda.get_device_name(), first match wins (so the
# PCIe / NVL H100s come before the SXM one); --peak-tflops overrides.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}


def relative_speed(ratio: float) -> str:
    """A time ratio (other's time / ours) in words: "2.3x faster", "1.1x slower", never "0.9x faster"."""
    if ratio <= 0 or ratio != ratio:
        return "speed not comparable"
    if round(ratio, 1) == 1.0:
        return f"as fast ({ratio:.2f}x)"
    return f"{ratio:.1f}x faster" if ratio > 1 else f"{1 / ratio:.1f}x slower"


def relative_memory(ratio: float) -> str:
    """A peak-memory ratio (other's / ours) in words: "3.0x less peak memory" or "1.2x more peak memory"."""
    if round(ratio, 1) == 1.0:
        return f"the same peak memory ({ratio:.2f}x)"
    return f"{ratio:.1f}x less peak memory" if ratio > 1 else f"{1 / ratio:.1f}x more peak memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=("tiny", "small", "base"), help="model size (CUDA: base, CPU: tiny)")
    parser.add_argument("--batch", type=_at_least(1), help="clips per step (CUDA: 128, CPU: 4)")
    parser.add_argument("--frames", type=_at_least(1), help="fbank frames per clip (CUDA: 1024 = 10.24 s, CPU: 256)")
    parser.add_argument("--steps", type=_at_least(1), help="timed steps (CUDA: 20, CPU: 5)")
    parser.add_argument("--warmup", type=_at_least(0),
                        help="untimed steps first (CUDA: 5, CPU: 2); with --compile, compiling happens here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto = bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--tokenizer", default="patch", choices=("patch", "frame"))
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each model's transformer blocks (as train.compile)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak (dense) TFLOP/s for the MFU column")


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum (a negative step count would crash mid-benchmark)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {minimum}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    import torch

    from maebench.distributed import resolve_device
    from maebench.upstream.frontend import SAMPLE_RATE, frames_to_samples

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.size or ("base" if cuda else "tiny")
    batch = args.batch or (128 if cuda else 4)
    frames = args.frames or (1024 if cuda else 256)
    steps = args.steps or (20 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else None
    num_samples = frames_to_samples(frames)  # exactly `frames` Kaldi frames (25 ms window, 10 ms shift)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        from maebench.trainer import cpu_threads

        torch.set_num_threads(cpu_threads())
    gpu = torch.cuda.get_device_name(device) if cuda else None
    peak = args.peak_tflops * 1e12 if args.peak_tflops else _peak_flops(gpu)
    if precision != "bf16" and not args.peak_tflops:
        peak = None  # the table holds bf16 peaks; an fp32 (TF32) step has a lower one

    generator = torch.Generator().manual_seed(0)
    wavs = (0.1 * torch.randn(batch, num_samples, generator=generator)).to(device)
    lens = torch.full((batch,), num_samples, device=device)
    token = args.tokenizer
    models = [
        (f"MAE-AST {token}", f"mae_ast_{token}:{size}", {}),
        (f"SSAST {token} two-pass", f"ssast_{token}:{size}", {"target_frames": frames, "pretrain_mode": "two_pass"}),
        (f"SSAST {token} one-pass", f"ssast_{token}:{size}", {"target_frames": frames, "pretrain_mode": "one_pass"}),
    ]
    where = f"cuda ({gpu})" if cuda else f"cpu ({torch.get_num_threads()} thread(s))"
    print(f"maebench bench pretrain: {where}, {size}, {token} tokens, batch {batch}, {frames} frames "
          f"({num_samples / SAMPLE_RATE:.2f} s), {precision}{', compiled' if args.compile else ''}, "
          f"{steps} timed steps after {warmup} warm-up")
    rows = []
    for label, preset, overrides in models:
        row = _time_model(label, preset, overrides, wavs, lens, device, dtype, steps, warmup, args.compile)
        if args.compile:
            torch._dynamo.reset()  # compiled graphs may hold the last model's weights alive
        if cuda:
            torch.cuda.empty_cache()  # the model and its optimizer state are gone with _time_model's frame
        rows.append(row)
        _print_row(row, batch, peak, num_samples, header=len(rows) == 1)
    _print_footer(rows, gpu, peak, precision)
    return 0


def _print_footer(rows: list[dict], gpu: str | None, peak: float | None, precision: str) -> None:
    """MAE-AST (the first row) against each SSAST variant (speed-up, peak-memory saving), then what is not shown."""
    mae = rows[0]
    for other in rows[1:]:
        if mae.get("step_s") and other.get("step_s"):
            memory = ""
            if mae.get("peak_bytes") and other.get("peak_bytes"):
                memory = f", {relative_memory(other['peak_bytes'] / mae['peak_bytes'])}"
            print(f"{mae['label']} vs {other['label']}: {relative_speed(other['step_s'] / mae['step_s'])}{memory}")
    if gpu and not peak and precision != "bf16":
        print("MFU not shown: the known peaks are bf16 ones; run with --precision bf16 or pass --peak-tflops")
    elif gpu and not peak:
        print(f"MFU not shown: no peak FLOP/s known for {gpu}; pass --peak-tflops")
    if not gpu:
        print("peak memory and MFU are measured on CUDA only")


def _peak_flops(gpu: str | None) -> float | None:
    if not gpu:
        return None
    for name, flops in PEAK_BF16_FLOPS.items():
        if name in gpu:
            return flops
    return None


def _time_model(label, preset, overrides, wavs, lens, device, dtype, steps, warmup, compile_step) -> dict:
    import contextlib
    import time

    import torch

    from maebench import upstream
    from maebench.upstream.blocks import compile_blocks

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = upstream.load(preset, **overrides).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                                  fused=cuda)

    def loss_of(w, n):
        return model.pretrain_loss(w, n).loss

    if compile_step:
        compile_blocks(model)  # as train.compile does
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    def step():
        with autocast():
            loss = loss_of(wavs, lens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    row = {"label": label, "flops": model.pretrain_flops(wavs.shape[1])}
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        if cuda:
            torch.cuda.synchronize(device)
        row["step_s"] = (time.perf_counter() - start) / steps
        row["loss"] = float(loss.detach())
        if cuda:
            row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    return row


def _print_row(row: dict, batch: int, peak: float | None, num_samples: int, *, header: bool) -> None:
    if header:
        print(f"{'model':<24} {'step ms':>9} {'clips/s':>9} {'peak mem':>10} {'MFU':>6} {'TFLOP/s':>8}")
    if "error" in row:
        print(f"{row['label']:<24} {row['error']}")
        return
    clips_per_s = batch / row["step_s"]
    achieved = row["flops"] * clips_per_s
    memory = f"{row['peak_bytes'] / 2**30:.1f} GiB" if row.get("peak_bytes") else "-"
    mfu = f"{100 * achieved / peak:.1f}%" if peak else "-"
    print(f"{row['label']:<24} {1000 * row['step_s']:>9.1f} {clips_per_s:>9.1f} {memory:>10} {mfu:>6} "
          f"{achieved / 1e12:>8.2f}")
