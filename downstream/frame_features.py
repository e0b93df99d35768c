"""Timestamp embeddings of a frozen upstream, for frame-level (event) probes: one (T, D) array per clip and the
time of each frame.

An upstream's frames are its timestamp embeddings (a `hear:` upstream loaded with embedding="timestamp" gives its
module's own). A frame's timestamp is the centre of its hop, (t + 0.5) x downsample_rate / sample_rate; HEAR
modules may centre theirs a little differently, well inside the event scores' 50-200 ms collars.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maebench.downstream.batching import eval_batches
from maebench.downstream.device import device_autocast, module_device
from maebench.progress import progress_bar
from maebench.upstream.interface import Upstream


def frame_timestamps_ms(upstream: Upstream, num_frames: int) -> np.ndarray:
    """Milliseconds of each output frame's centre."""
    hop_ms = 1000.0 * float(upstream.downsample_rate) / float(upstream.sample_rate)
    return (np.arange(num_frames, dtype=np.float64) + 0.5) * hop_ms


def frame_features(upstream: Upstream, task, examples: Sequence, *, layer: str = "mean", batch_size: int = 8,
                   quiet: bool = True) -> list[np.ndarray]:
    """(T_i, D) float32 frames of each example: the mean over the upstream's layers, or the layer `layer` (an
    index as text or int)."""
    device = module_device(upstream)
    out: list[np.ndarray | None] = [None] * len(examples)
    was_training = upstream.training
    upstream.eval()
    try:
        with progress_bar(quiet, unit="clips") as progress, torch.inference_mode(), device_autocast(device):
            bar = progress.add_task(f"frames {task.name}", total=len(examples))
            for indices, wavs, lens in eval_batches(upstream, task, examples, batch_size=batch_size):
                features = upstream(wavs.to(device), lens.to(device))
                hidden = features.hidden_states
                frames = torch.stack([h.float() for h in hidden]).mean(0) if layer == "mean" else \
                    hidden[int(layer)].float()
                for row, index in enumerate(indices):
                    out[index] = frames[row, : int(features.lens[row])].cpu().numpy()
                progress.advance(bar, len(indices))
    finally:
        upstream.train(was_training)
    return [frames for frames in out if frames is not None]
