"""Time the batched Kaldi filterbank against torchaudio's per-utterance Kaldi fbank.

Makes a batch of speech-like clips (voiced harmonics with a moving pitch, syllable envelopes, noise, pauses),
computes `maebench.upstream.frontend.fbank_batch` once for the whole batch and `torchaudio.compliance.kaldi.fbank`
once per clip, and prints the median time of each (warm-up excluded, the two alternated), the speed-up, the process
CPU time (a steadier figure on a shared machine) and the largest difference.
"""

from __future__ import annotations

import argparse
import math


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (default 32)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip in seconds (default 10)")
    parser.add_argument("--device", default="cpu", help="torch device for both implementations (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (default 5)")
    parser.add_argument("--config", choices=("mae_ast", "ssast"), default="mae_ast",
                        help="front-end settings: MAE-AST (povey) or SSAST (hanning, mean removed)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic audio (default 0)")


def speech_like_batch(batch: int, num_samples: int, sample_rate: int, seed: int = 0):
    """(batch, num_samples) float32 clips that look like speech to a filterbank, not like white noise.

    Each clip has voiced segments (a pitch contour with ~20 decaying harmonics), syllable-rate loudness, a noise
    floor and a pause of exact silence, so the spectra have the dynamic range real recordings have.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    f0 = 100.0 + 120.0 * torch.rand(batch, 1, generator=gen, dtype=torch.float64)
    wobble = 1.0 + 0.15 * torch.sin(2 * math.pi * (0.3 + torch.rand(batch, 1, generator=gen)) * t)
    phase = 2 * math.pi * torch.cumsum(f0 * wobble, dim=1) / sample_rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 21))
    syllables = torch.sin(math.pi * (3.0 + 2.0 * torch.rand(batch, 1, generator=gen)) * t).abs() ** 2
    noise = torch.randn(batch, num_samples, generator=gen, dtype=torch.float64)
    wav = 0.1 * voiced * syllables + 0.003 * noise
    pause = num_samples // 5
    start = int(torch.randint(0, max(1, num_samples - pause), (1,), generator=gen))
    wav[:, start:start + pause] = 0.0
    return wav.to(torch.float32)


def _interleaved_timings(fns: dict, repeats: int, synchronize) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, process CPU seconds) per function, alternating them so load drift hits both alike."""
    import statistics
    import time

    for fn in fns.values():  # warm-up: caches, FFT plans, allocator
        fn()
    synchronize()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from torchaudio.compliance import kaldi

    from maebench.commands.bench_pretrain import relative_speed
    from maebench.errors import MaebenchError
    from maebench.tables import new_table, print_table
    from maebench.upstream.frontend import MAE_AST_FBANK, SSAST_FBANK, fbank_batch

    if args.batch < 1 or args.seconds <= 0 or args.repeats < 1:
        raise MaebenchError("bench fbank needs --batch >= 1, --seconds > 0 and --repeats >= 1")
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        raise MaebenchError(f"device {args.device!r} is not available ({err}); use --device cpu") from err
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = MAE_AST_FBANK if args.config == "mae_ast" else SSAST_FBANK
    num_samples = int(round(args.seconds * cfg.sample_rate))
    if num_samples < cfg.window_size:
        raise MaebenchError(f"--seconds {args.seconds} is shorter than one {cfg.frame_length_ms} ms frame")
    wavs = speech_like_batch(args.batch, num_samples, cfg.sample_rate, args.seed).to(device)
    lens = torch.full((args.batch,), num_samples, device=device)
    kwargs = cfg.kaldi_kwargs()

    def per_utterance():
        out = []
        for wav in wavs:
            if cfg.remove_mean:
                wav = wav - wav.mean()
            out.append(kaldi.fbank(wav[None], **kwargs))
        return out

    def batched():
        return fbank_batch(wavs, lens, cfg)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        timings = _interleaved_timings({"loop": per_utterance, "batched": batched}, args.repeats, synchronize)
        feats, frame_lens = batched()
        reference = torch.stack(per_utterance())
    max_diff = float((feats - reference).abs().max())
    (loop_s, loop_cpu), (batch_s, batch_cpu) = timings["loop"], timings["batched"]

    table = new_table(f"Kaldi fbank, {args.batch} x {args.seconds:g} s on {device} ({args.config}, "
                      f"{torch.get_num_threads()} threads, median of {args.repeats})",
                      ("implementation", "batch ms", "ms / clip", "speed", "CPU ms"))
    table.add_row("torchaudio kaldi.fbank loop", f"{loop_s * 1e3:.1f}", f"{loop_s * 1e3 / args.batch:.3f}", "reference",
                  f"{loop_cpu * 1e3:.1f}")
    table.add_row("maebench fbank_batch", f"{batch_s * 1e3:.1f}", f"{batch_s * 1e3 / args.batch:.3f}",
                  relative_speed(loop_s / batch_s), f"{batch_cpu * 1e3:.1f}")
    console = Console()
    print_table(table, console)
    console.print(f"frames per clip: {int(frame_lens[0])}; max abs difference: {max_diff:.2e}")
    return 0
