"""The feature cache: pooled features give exactly the frame-level SUPERB head, are extracted correctly in padded
sorted batches, are reused across calls and probes, and are invalidated when the weights or the data change."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_probes import SpectrumUpstream, make_task

from maebench.downstream.batching import length_batches, masked_mean
from maebench.downstream.feature_cache import cached_features
from maebench.downstream.heads import SuperbHead
from maebench.downstream.probes import linear_probe, logreg_probe
from maebench.paths import cache_dir


def test_pooled_head_equals_frame_level_head_float64():
    torch.manual_seed(3)
    num_layers, batch, frames, dim, classes = 4, 5, 9, 6, 3
    head = SuperbHead(num_layers, dim, classes, projector_dim=7).double()
    with torch.no_grad():
        head.layer_logits.copy_(torch.randn(num_layers, dtype=torch.float64))
    hidden = [torch.randn(batch, frames, dim, dtype=torch.float64) for _ in range(num_layers)]
    lens = torch.tensor([9, 1, 4, 7, 2])
    pooled = torch.stack([masked_mean(h, lens) for h in hidden], dim=1)  # (B, L, D)

    # independent reference: s3prl's computation written out item by item over valid frames only
    w = torch.softmax(head.layer_logits, 0)
    reference = torch.stack([
        head.classifier.weight @ torch.stack([
            head.projector.weight @ sum(w[l] * hidden[l][b, t] for l in range(num_layers)) + head.projector.bias
            for t in range(int(lens[b]))
        ]).mean(0) + head.classifier.bias
        for b in range(batch)
    ])
    frame_out, pooled_out = head.forward_frames(hidden, lens), head.forward_pooled(pooled)
    torch.testing.assert_close(frame_out, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled_out, frame_out, rtol=0, atol=1e-12)

    # same function of the parameters -> same gradients, hence the same training trajectory
    targets = torch.tensor([0, 2, 1, 1, 0])
    grads = []
    for out in (head.forward_frames(hidden, lens), head.forward_pooled(pooled)):
        head.zero_grad()
        torch.nn.functional.cross_entropy(out, targets).backward()
        grads.append([p.grad.clone() for p in head.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_length_batches_sorts_and_respects_budgets():
    batches = length_batches([5, 50, 10, 40, 20], batch_size=2, batch_samples=85)
    assert batches == [[1], [3, 4], [2, 0]]  # 2 * 50 > 85 so the longest goes alone
    assert sorted(i for b in batches for i in b) == list(range(5))


@pytest.fixture()
def task(tmp_path):
    return make_task(tmp_path / "data", per_class=(3, 1, 2))


def test_extracted_features_equal_unbatched_masked_means(task):
    upstream = SpectrumUpstream()
    examples = task.folds[0].train
    features = cached_features(upstream, task, examples, batch_size=4)
    assert features.features.shape == (len(examples), 3, 16) and features.features.dtype == np.float32
    assert features.keys == [ex.key for ex in examples] and features.labels == [ex.label for ex in examples]
    with torch.no_grad():
        for row, example in enumerate(examples):
            wav = task.read(example)[None]
            out = upstream(wav, torch.tensor([wav.shape[1]]))
            expected = torch.stack([h[0, : int(out.lens[0])].mean(0) for h in out.hidden_states])
            np.testing.assert_allclose(features.features[row], expected.numpy(), rtol=1e-5, atol=1e-6)
            assert features.lens[row] == int(out.lens[0])
    # scattered rows (e.g. another fold's split order) are gathered from the same entry, no new extraction
    calls = upstream.forward_calls
    reordered = cached_features(upstream, task, examples[::-1])
    assert reordered.hit and upstream.forward_calls == calls
    np.testing.assert_array_equal(reordered.features, features.features[::-1])
    assert reordered.labels == features.labels[::-1]


def test_cache_hit_then_invalidated_by_weights_and_data(task):
    upstream = SpectrumUpstream()
    fold = task.folds[0]
    first = linear_probe(upstream, task, fold, seed=0)
    calls_first = upstream.forward_calls
    # one extraction of the whole task: train misses, dev and test are read from the entry it wrote
    assert calls_first > 0 and first.details["cache_hits"] == {"train": False, "dev": True, "test": True}

    second = logreg_probe(upstream, task, fold, seed=0)  # another probe, same features
    third = linear_probe(upstream, task, fold, seed=1)  # another seed
    assert upstream.forward_calls == calls_first
    assert all(second.details["cache_hits"].values()) and all(third.details["cache_hits"].values())
    entries = sorted(p.name for p in (cache_dir() / "features").iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")  # one entry per task, no temp dirs left
    index = json.loads((cache_dir() / "features" / entries[0] / "index.json").read_text())
    assert {"keys", "labels", "lens", "description"} <= set(index)

    with torch.no_grad():  # change one weight
        upstream.layers[2].bias[0] += 0.5
    before = upstream.forward_calls
    changed = cached_features(upstream, task, fold.test)
    assert not changed.hit and upstream.forward_calls > before

    # change one audio file (a new Task object, as a new run would load)
    path = fold.test[0].path
    wav, sr = sf.read(path, dtype="float32")
    sf.write(path, np.concatenate([wav, wav[:800]]), sr)
    new_task = dataclasses.replace(task, _fingerprint=None)
    before = upstream.forward_calls
    again = cached_features(upstream, new_task, fold.test)
    assert not again.hit and upstream.forward_calls > before
    assert new_task.data_fingerprint() != task.data_fingerprint()
    assert cached_features(upstream, new_task, fold.test).hit


def test_damaged_entry_is_rebuilt_and_unreadable_entry_names_its_folder(task):
    from maebench.errors import MaebenchError

    upstream = SpectrumUpstream()
    first = cached_features(upstream, task, task.folds[0].test)
    (first.directory / "features.npy").unlink()  # a file removed by hand: the entry is rebuilt, not crashed on
    calls = upstream.forward_calls
    rebuilt = cached_features(upstream, task, task.folds[0].test)
    assert not rebuilt.hit and upstream.forward_calls > calls
    np.testing.assert_array_equal(rebuilt.features, first.features)

    (rebuilt.directory / "index.json").write_text("{truncated")
    with pytest.raises(MaebenchError, match=f"feature cache entry {rebuilt.directory} is unreadable"):
        cached_features(upstream, task, task.folds[0].test)


def test_leftovers_of_a_killed_extraction_are_swept(task):
    """A kill -9 during extraction left `.KEY.*` folders (tempfile names) that no run ever removed (issue 14)."""
    import os
    import subprocess
    import sys

    from maebench.atomic import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    features = cache_dir() / "features"
    killed = features / f".0123abcd.tmp-{int(dead.stdout)}-{_host()}-0000abcd"
    live = features / f".4567ef01.tmp-{os.getpid()}-{_host()}-0000abce"  # an extraction running right now
    other_host = features / f".89ab.tmp-{int(dead.stdout)}-elsewhere-0000abcf"  # a shared cache: not ours to judge
    for leftover in (killed, live, other_host):
        (leftover / "features.npy").parent.mkdir(parents=True)
        (leftover / "features.npy").write_bytes(b"half")
    entry = cached_features(SpectrumUpstream(), task, task.folds[0].test).directory
    assert not killed.exists() and live.is_dir() and other_host.is_dir()
    assert sorted(p.name for p in features.iterdir()) == sorted([entry.name, live.name, other_host.name])
