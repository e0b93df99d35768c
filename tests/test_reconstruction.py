"""RUN/reconstruction.png: written at the end of `maebench pretrain` for both model families, and the arrays it
draws are right: the target is the Kaldi filterbank normalised as the model does (torchaudio as the reference),
masked regions are exactly the tokens the mask names (worked out here from the token layouts), visible regions
keep the input, and the prediction is the one the loss scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from helpers import speechlike, write_tone_clips

from maebench.cli import main
from maebench.reconstruction import clip_panels, draw_mask
from maebench.upstream.registry import preset

SMALL = {"dim": 32, "num_heads": 2, "ffn_dim": 64, "depth": 2}


def _kaldi(wav: torch.Tensor, **options) -> torch.Tensor:
    return torchaudio.compliance.kaldi.fbank(wav[None].double(), sample_frequency=16000, use_energy=False,
                                             num_mel_bins=128, dither=0.0, **options).float()  # (frames, 128)


def _token_regions(name: str, token: int, model) -> tuple[slice, slice]:
    """(mel rows, frame columns) one token covers, from the documented layouts (reference.md sections 3 and 4)."""
    if name == "mae_ast_patch":  # time-major 16x16: token = step * 8 + mel block
        step, block = divmod(token, 8)
        return slice(16 * block, 16 * block + 16), slice(16 * step, 16 * step + 16)
    if name == "mae_ast_frame":  # 128 x 2 frames: token = step
        return slice(0, 128), slice(2 * token, 2 * token + 2)
    rows, cols = model.config.pretrain_grid  # SSAST patch: frequency-major 16x16, token = row * cols + col
    row, col = divmod(token, cols)
    return slice(16 * row, 16 * row + 16), slice(16 * col, 16 * col + 16)


@pytest.mark.parametrize("name", ["mae_ast_patch", "mae_ast_frame", "ssast_patch"])
def test_panels_show_the_normalised_filterbank_and_the_mask_where_the_mask_says(name):
    torch.manual_seed(0)
    extra = {"decoder_depth": 1} if name.startswith("mae_ast") else {"target_frames": 112}
    init = preset(f"{name}:tiny", **SMALL, **extra).eval()
    trained = preset(f"{name}:tiny", **SMALL, **extra).eval()
    wav = speechlike(16000, seed=3)
    row = clip_panels({"init": init, "trained": trained}, "clip", wav, seed=5)

    if name.startswith("mae_ast"):  # BatchNorm(affine=False) on the clip's own statistics, times 0.5
        fbank = _kaldi(wav)
        expected = (fbank - fbank.mean()) / torch.sqrt(fbank.var(unbiased=False) + 1e-5) * 0.5
        frames = row.target.shape[1]
        assert frames == (fbank.shape[0] // init.ktime) * init.ktime
    else:  # mean-removed wave, zero-padded to target_frames, then (x - mean) / (2 std) with the dataset's stats
        fbank = _kaldi(wav - wav.mean(), htk_compat=True, window_type="hanning", frame_shift=10)
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, 112 - fbank.shape[0]))
        expected = (fbank - init.config.norm_mean) / (2 * init.config.norm_std)
        frames = 112
    assert row.target.shape == (128, frames)
    np.testing.assert_allclose(row.target, expected[:frames].T.numpy(), atol=2e-4)

    mask = draw_mask(init, wav.numel(), seed=5)[0]
    assert mask.any() and not mask.all()
    expected_mask = np.zeros_like(row.mask)
    for token in torch.nonzero(mask).flatten().tolist():
        rows, cols = _token_regions(name, token, init)
        expected_mask[rows, cols] = True
    np.testing.assert_array_equal(row.mask, expected_mask)
    masked_input = row.masked_input
    assert np.isnan(masked_input[row.mask]).all()
    np.testing.assert_array_equal(masked_input[~row.mask], row.target[~row.mask])
    for model_name, model in (("init", init), ("trained", trained)):
        predicted = row.predicted[model_name]
        np.testing.assert_array_equal(predicted[~row.mask], row.target[~row.mask])  # visible: as given
        assert not np.allclose(predicted[row.mask], row.target[row.mask])
        # the masked MSE shown is the one the model's own loss reports for this clip and mask
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            model.train()
            stats = model.pretrain_loss(wav[None], torch.tensor([wav.numel()]), mask=mask[None]).stats
            model.eval()
        assert row.mse[model_name] == pytest.approx(float(stats["mse"]), rel=1e-4)
    assert not np.array_equal(row.predicted["init"], row.predicted["trained"])  # two different models


@pytest.mark.parametrize("name,overrides", [
    ("mae_ast_patch", "{dim: 32, num_heads: 2, ffn_dim: 64, depth: 2, decoder_depth: 1}"),
    ("ssast_patch", "{dim: 32, num_heads: 2, ffn_dim: 64, depth: 2}"),
])
def test_pretrain_writes_the_figure_into_the_run(tmp_path, name, overrides, capsys):
    clips = write_tone_clips(tmp_path / "clips", count=8)
    run_dir = tmp_path / "run"
    assert main(["pretrain", "--data", str(clips), "--run-dir", str(run_dir), "--model", name,
                 "--set", f"model.overrides={overrides}", "--set", "train.device=cpu", "--max-steps", "2",
                 "--batch-size", "4", "--threads", "1", "--set", "data.num_workers=0"]) == 0
    figure = run_dir / "reconstruction.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert f"reconstruction figure: {figure}" in capsys.readouterr().out
    # the figure is the run's own: --overwrite removes it with the rest, and the new run draws it again
    assert main(["pretrain", "--data", str(clips), "--run-dir", str(run_dir), "--model", name,
                 "--set", f"model.overrides={overrides}", "--set", "train.device=cpu", "--max-steps", "1",
                 "--batch-size", "4", "--threads", "1", "--overwrite", "--quiet", "--set", "data.num_workers=0"]) == 0
    assert "reconstruction.png" in capsys.readouterr().out and figure.exists()


def test_the_demo_report_shows_each_pretraining_runs_figure(tmp_path):
    from maebench import report

    run_dir = tmp_path / "run"
    stages = {}
    for name in ("mae_ast", "ssast"):
        figure = run_dir / "pretrain" / name / "reconstruction.png"
        figure.parent.mkdir(parents=True)
        figure.write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
        stages[f"pretrain/{name}"] = {"status": "done", "model": f"{name}_patch:tiny", "steps": 10, "step_s": 0.5,
                                      "clips_per_s": 32.0, "loss_curve": [[5, 2.0], [10, 1.5]], "result": {},
                                      "outputs": {"run": f"pretrain/{name}", "init": f"pretrain/{name}/init"}}
    path = report.write_report(run_dir, {"recipe": "hand", "stages": stages})
    text = path.read_text()
    for name in ("mae_ast", "ssast"):
        copied = path.parent / f"reconstruction_{name}.png"
        assert copied.read_bytes() == (run_dir / "pretrain" / name / "reconstruction.png").read_bytes()
        assert f"](reconstruction_{name}.png)" in text
