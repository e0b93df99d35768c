"""Per-layer feature statistics (maebench/feature_stats.py) and their section of the run report.

The statistics are checked against values worked out by hand on chosen hidden states (a fake Upstream returns
them); one real tiny model goes through `write_feature_stats` on the toy ks2 task; the report test builds a run
directory by hand with a `stats` stage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from maebench import feature_stats, report
from maebench.feature_stats import effective_dim, layer_statistics, write_feature_stats
from maebench.upstream import registry
from maebench.upstream.interface import Features, Upstream

E = torch.eye(4)  # e1..e4 in R^4


class ChosenStates(Upstream):
    """An Upstream whose features are fixed tensors: hidden_states (one (B, T, D) per layer) and frame lens (B,);
    it records the mode of each forward call."""

    family = "chosen"
    downsample_rate = 160

    def __init__(self, states: list[Tensor], frame_lens: list[int]) -> None:
        super().__init__()
        self.states, self.frame_lens = states, torch.tensor(frame_lens)
        self.hidden_size, self.num_layers = states[0].shape[-1], len(states)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, wavs: Tensor, lens: Tensor) -> Features:
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        return Features(hidden_states=self.states, lens=self.frame_lens)

    def to_config(self) -> dict:
        return {}


def clips(*frames: list[Tensor], fill: float = 0.0) -> tuple[Tensor, list[int]]:
    """One layer's (B, T, D) from each clip's frames, padded with `fill`, and the clips' frame counts."""
    longest = max(len(f) for f in frames)
    out = torch.full((len(frames), longest, frames[0][0].numel()), fill)
    for row, clip in enumerate(frames):
        out[row, : len(clip)] = torch.stack(clip)
    return out, [len(f) for f in frames]


def stats(hidden: Tensor, frame_lens: list[int]) -> dict:
    """The one layer's statistics of `hidden` through layer_statistics (the waveforms do not matter here)."""
    upstream = ChosenStates([hidden], frame_lens)
    wavs = torch.zeros(hidden.shape[0], 1600)
    (row,) = layer_statistics(upstream, wavs, torch.full((hidden.shape[0],), 1600))
    return row


# ------------------------------------------------------------------------------------------------ token cosine


def test_identical_frames_have_cosine_one():
    v = torch.tensor([1.0, 2.0, 0.0, -1.0])
    assert stats(*clips([v, v, v], [2 * v, v]))["token_cosine"] == pytest.approx(1.0)  # scale does not matter


def test_opposite_frames_have_cosine_minus_one():
    assert stats(*clips([E[0], -E[0]]))["token_cosine"] == pytest.approx(-1.0)


def test_orthogonal_frames_have_cosine_zero():
    assert stats(*clips([E[0], E[1], E[2]], [E[3], 5 * E[1]]))["token_cosine"] == pytest.approx(0.0, abs=1e-12)


def test_cosine_is_the_mean_over_clips_of_the_pairwise_mean():
    # clip A [e1, e1, e2]: 6 ordered pairs i != j, cos 1 twice (e1,e1) and 0 four times -> 2/6 = 1/3;
    # clip B [e1, -e1]: -1; clip C has one frame: skipped. Mean over A and B: (1/3 - 1) / 2 = -1/3
    row = stats(*clips([E[0], E[0], E[1]], [E[0], -E[0]], [E[2]]))
    assert row["token_cosine"] == pytest.approx(-1 / 3)


def test_padding_frames_are_ignored():
    frames = ([E[0], E[0], E[1]], [E[0], -E[0]], [E[2]], [E[1], E[3], E[1], E[0]])
    clean = stats(*clips(*frames))
    for garbage in (1e6, -3.0, float("nan")):
        assert stats(*clips(*frames, fill=garbage)) == pytest.approx(clean), garbage
    # A 1/3, B -1, C skipped, D [e2, e4, e2, e1]: 12 ordered pairs, cos 1 for (e2, e2) twice -> 2/12; mean of three
    assert clean["token_cosine"] == pytest.approx((1 / 3 - 1 + 2 / 12) / 3)


def test_no_clip_with_two_frames_gives_no_cosine():
    assert stats(*clips([E[0]], [E[1]]))["token_cosine"] is None


# --------------------------------------------------------------------------------- effective dim, feature std


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_k_equal_orthogonal_directions_give_effective_dim_k(k):
    # clips pooled to +-e_i (each clip two frames whose mean is the target, plus garbage padding): centred over
    # clips the 2k vectors have k equal singular values sqrt(2) -> p = 1/k each -> exp(log k) = k
    pooled = [sign * E[i] for i in range(k) for sign in (1, -1)]
    frames = [[p + E[3] * 0.5, p - E[3] * 0.5, p] if n % 2 else [p + E[0], p - E[0]] for n, p in enumerate(pooled)]
    row = stats(*clips(*frames, fill=float("nan")))
    assert row["effective_dim"] == pytest.approx(k, rel=1e-9)


def test_unequal_directions_give_the_entropy_by_hand():
    # pooled +-2 e1, +-1 e2: squared singular values 8 and 2 -> p = (0.8, 0.2) -> exp(-(.8 ln .8 + .2 ln .2))
    pooled = torch.stack([2 * E[0], -2 * E[0], E[1], -E[1]])
    assert effective_dim(pooled) == pytest.approx(math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))))
    assert effective_dim(pooled) == pytest.approx(1.6494, abs=1e-4)


def test_effective_dim_ignores_the_mean_and_is_one_on_a_line():
    offset = torch.tensor([3.0, -1.0, 7.0, 2.0])
    line = torch.stack([offset + t * torch.tensor([1.0, 1.0, 0.0, 0.0]) for t in (-2.0, 0.5, 1.0, 4.0)])
    assert effective_dim(line) == pytest.approx(1.0)


def test_identical_pooled_vectors_give_effective_dim_zero_and_std_zero():
    v = torch.tensor([0.1, 0.2, 0.3, 0.7])
    # every clip pools to v (the last (3v - v) / 2, equal up to float32 rounding: below the noise floor)
    row = stats(*clips([v, v], [v], [3 * v, -v]))
    assert row["effective_dim"] == 0.0 and row["feature_std"] == pytest.approx(0.0, abs=1e-7)


def test_feature_std_is_the_mean_over_dimensions_of_the_population_std():
    # pooled e1, -e1, e2 + e1, e2 - e1 over 4 clips: dim 1 values (1, -1, 1, -1) std 1; dim 2 (0, 0, 1, 1) std 0.5;
    # dims 3 and 4: 0 -> mean (1 + 0.5) / 4 = 0.375
    row = stats(*clips([E[0]], [-E[0]], [E[1] + E[0]], [E[1] - E[0]]))
    assert row["feature_std"] == pytest.approx(0.375)


def test_every_layer_gets_a_row_and_the_module_runs_frozen():
    a, lens = clips([E[0], E[0]], [E[1], -E[1]])
    b, _ = clips([E[0], E[1]], [E[2], E[3]])
    upstream = ChosenStates([a, b], lens).train()
    rows = layer_statistics(upstream, torch.zeros(2, 1600), torch.full((2,), 1600))
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[0]["token_cosine"] == pytest.approx(0.0) and rows[1]["token_cosine"] == pytest.approx(0.0)
    assert [r["token_cosine"] for r in layer_statistics(ChosenStates([a], [2, 1]), torch.zeros(2, 1),
                                                         torch.ones(2))] == [pytest.approx(1.0)]
    assert upstream.calls == [(False, True)]  # eval mode, inference mode
    assert upstream.training  # its mode is given back


# --------------------------------------------------------------------------------------- a real tiny model


def test_write_feature_stats_on_the_toy_task_with_a_tiny_model(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = registry.preset("mae_ast_patch:tiny", depth=2)
    spec = str(registry.save_upstream(model, tmp_path / "tiny"))
    out = write_feature_stats({"tiny": spec}, tmp_path / "stats" / "feature_stats.json", clips=8)
    data = json.loads(out.read_text())
    assert set(data) == {"maebench_feature_stats", "task", "clips", "definitions", "upstreams"}
    assert data["maebench_feature_stats"] == 1 and data["task"] == "ks2" and 2 <= data["clips"] <= 8
    assert set(data["definitions"]) == {"token_cosine", "effective_dim", "feature_std"}
    rows = data["upstreams"]["tiny"]
    assert [r["layer"] for r in rows] == list(range(model.num_layers)) and len(rows) == 2
    for row in rows:
        assert -1.0 <= row["token_cosine"] <= 1.0
        assert 1.0 <= row["effective_dim"] <= min(data["clips"], model.hidden_size)
        assert row["feature_std"] > 0
    # in batches of 3 clips the accumulated statistics are the same as in one batch
    monkeypatch.setattr(feature_stats, "BATCH_CLIPS", 3)
    batched = write_feature_stats({"tiny": spec}, tmp_path / "batched.json", clips=8)
    again = json.loads(batched.read_text())["upstreams"]["tiny"]
    for one, other in zip(rows, again, strict=True):
        assert one == pytest.approx(other, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------------- the report

STATS = {"maebench_feature_stats": 1, "task": "ks2", "clips": 8, "definitions": {},
         "upstreams": {"mae": [{"layer": 0, "token_cosine": 0.5, "effective_dim": 2.0, "feature_std": 0.1},
                               {"layer": 1, "token_cosine": 0.98, "effective_dim": 1.04, "feature_std": 0.01}],
                       "mae@init": [{"layer": 0, "token_cosine": 0.25, "effective_dim": 6.5, "feature_std": 0.2},
                                    {"layer": 1, "token_cosine": None, "effective_dim": 7.5, "feature_std": 0.2}]}}


def _run_dir(tmp_path: Path, with_stats: bool) -> tuple[Path, dict]:
    run = tmp_path / "run"
    (run / "stats").mkdir(parents=True)
    (run / "stats" / "feature_stats.json").write_text(json.dumps(STATS))
    stages = {"pretrain/mae": {"status": "done", "model": "mae_ast_patch:tiny", "steps": 10, "step_s": 0.5,
                               "clips_per_s": 32.0, "loss_curve": [[5, 2.0], [10, 1.5]], "result": {}}}
    if with_stats:  # recorded relative to the run directory, as the pipeline's manifest does
        stages["stats"] = {"status": "done", "outputs": {"stats": "stats/feature_stats.json"}, "task": "ks2"}
    return run, {"recipe": "hand", "stages": stages}


def test_report_shows_the_feature_statistics(tmp_path):
    run, manifest = _run_dir(tmp_path, with_stats=True)
    path = report.write_report(run, manifest)
    text = path.read_text()
    assert "## Feature statistics" in text and "8 ks2 test clips" in text
    assert "| upstream | layer 0 cos / eff.dim | layer 1 cos / eff.dim |" in text
    assert "| mae | 0.50 / 2.0 | 0.98 / 1.0 |" in text and "| mae@init | 0.25 / 6.5 | – / 7.5 |" in text
    assert "![feature statistics per layer](features.png)" in text
    assert text.index("## Feature statistics") < text.index("features.png") < text.index("## Stages")
    assert (path.parent / "features.png").stat().st_size > 0
    assert json.loads((path.parent / "summary.json").read_text())["feature_stats"] == STATS


def test_report_without_a_stats_stage_is_as_before(tmp_path):
    run, manifest = _run_dir(tmp_path, with_stats=False)
    path = report.write_report(run, manifest)
    assert "Feature statistics" not in path.read_text() and not (path.parent / "features.png").exists()
    assert json.loads((path.parent / "summary.json").read_text())["feature_stats"] is None
    manifest["stages"]["stats"] = {"status": "failed", "error": "boom"}  # a failed stage: no section either
    assert "## Feature statistics" not in report.write_report(run, manifest).read_text()


def test_the_reading_names_collapse_from_the_statistics_against_the_random_init():
    from maebench.report import collapse_reading

    def rows(cosines, dims):
        pairs = enumerate(zip(cosines, dims, strict=True))
        return [{"layer": i, "token_cosine": c, "effective_dim": d} for i, (c, d) in pairs]

    healthy = {"task": "ks2", "upstreams": {"m": rows([0.4, 0.6], [8.0, 9.0]), "m@init": rows([0.8, 0.8], [7.0, 7.5])}}
    text = collapse_reading(healthy, "m")
    assert "no layer has collapsed" in text and "0.40-0.60" in text and "0.80-0.80" in text and "7.0-7.5" in text
    frames_alike = {**healthy, "upstreams": {**healthy["upstreams"], "m": rows([0.5, 0.97], [8.0, 9.0])}}
    assert "some layers have collapsed" in collapse_reading(frames_alike, "m")
    clips_on_a_line = {**healthy, "upstreams": {**healthy["upstreams"], "m": rows([0.5, 0.6], [1.3, 9.0])}}
    assert "some layers have collapsed" in collapse_reading(clips_on_a_line, "m")
    assert collapse_reading(None, "m") == ""
    assert collapse_reading({"upstreams": {"m": healthy["upstreams"]["m"]}}, "m") == ""  # no random init to compare
