"""s3prl's SUPERB downstreams on torchaudio >= 2.9 with a maebench upstream.

- the sox_effects replacement against the real `sox` command on the same files (skipped only without sox);
- s3prl's own speech_commands (KS1), voxceleb1 (SID) and emotion (ER) downstream experts train a few steps and
  evaluate dev and test through the legacy runner (`python -m maebench.s3prl`) on maebench's toy look-alikes of
  the datasets, with configs shaped like s3prl's `downstream/<task>/config.yaml` (the pip package lacks them);
  speech_commands with catalyst hidden (no current pip installs it), through maebench's stand-in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import one_line_error, write_wav

from maebench.errors import MaebenchError
from maebench.upstream.sox_effects import apply_effects_file, apply_effects_tensor

SOX = shutil.which("sox")
needs_sox = pytest.mark.skipif(SOX is None, reason="the sox command is not installed")


def run_sox(source: Path, effects: list[list[str]], out: Path) -> tuple[np.ndarray, int]:
    """The reference: the sox command itself, float32 output, (channels, time)."""
    subprocess.run([SOX, "-D", "-V1", str(source), "-e", "floating-point", "-b", "32", str(out),
                    *[part for effect in effects for part in effect]], check=True)
    data, rate = sf.read(str(out), dtype="float32", always_2d=True)
    return data.T, rate


@pytest.fixture(scope="module")
def stereo_44k(tmp_path_factory) -> Path:
    """1.3 s of 44.1 kHz stereo: a tone and a chirp on the left, a tone with noise on the right."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t * (1 + 0.2 * t))
    right = 0.25 * np.sin(2 * np.pi * 1200 * t) + 0.05 * rng.standard_normal(len(t))
    return write_wav(tmp_path_factory.mktemp("sox") / "stereo.wav", np.stack([left, right], 1).astype(np.float32),
                     44100, subtype="FLOAT")


@pytest.fixture(scope="module")
def with_pauses(tmp_path_factory) -> Path:
    """16 kHz mono: silence, tone, a long pause, tone, a short pause, tone, silence (sox `silence` cases)."""
    def tone(seconds, freq):
        return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * 16000)) / 16000)

    def gap(seconds):
        return np.zeros(int(seconds * 16000))

    wav = np.concatenate([gap(0.3), tone(0.5, 440), gap(0.4), tone(0.5, 300), gap(0.05), tone(0.2, 440), gap(0.3)])
    return write_wav(tmp_path_factory.mktemp("sox") / "pauses.wav", wav.astype(np.float32), subtype="FLOAT")


EXACT_CASES = [
    [["channels", "1"]],
    [["gain", "-3.0"]],
    [["gain", "-n", "-2"]],
    [["norm"]],
    [["channels", "1"], ["norm", "-1"]],
    [["pad", "0.1", "0.05"], ["reverse"]],
    # sv_voxceleb1's trimming: leading silence, then every pause of 0.1 s or more
    [["channels", "1"], ["silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"]],
]


@needs_sox
@pytest.mark.parametrize("effects", EXACT_CASES, ids=lambda e: " ".join(" ".join(x) for x in e))
def test_effects_equal_sox(stereo_44k, tmp_path, effects):
    ref, ref_rate = run_sox(stereo_44k, effects, tmp_path / "ref.wav")
    ours, rate = apply_effects_file(str(stereo_44k), effects)
    assert rate == ref_rate and ours.dtype == torch.float32
    assert tuple(ours.shape) == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


@needs_sox
@pytest.mark.parametrize("effects", [
    [["silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"]],  # 0.4 s pause removed, 0.05 s pause kept
    [["silence", "1", "0.1", "0.1%", "1", "0.1", "0.1%"]],  # output stops at the first long pause
    [["silence", "1", "0.1", "0.1%"]],  # leading silence only
])
def test_silence_trims_like_sox(with_pauses, tmp_path, effects):
    ref, _ = run_sox(with_pauses, effects, tmp_path / "ref.wav")
    ours, _ = apply_effects_file(with_pauses, effects)
    assert tuple(ours.shape) == ref.shape  # e.g. 20636 samples: each removed pause keeps sox's 20 ms RMS tail
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


@needs_sox
def test_speech_commands_effects_close_to_sox(stereo_44k, tmp_path):
    """The chain speech_commands / sv_voxceleb1 / quesst14 apply: mono, 16 kHz, -3 dB. Resampling filters differ
    slightly (sox's own vs a Kaiser sinc); the right channel's white noise reaches the band edge, where they
    differ most."""
    effects = [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]]
    ref, ref_rate = run_sox(stereo_44k, effects, tmp_path / "ref.wav")
    ours, rate = apply_effects_file(stereo_44k, effects)
    assert rate == ref_rate == 16000 and tuple(ours.shape) == ref.shape == (1, 20800)
    diff = ours.numpy() - ref
    assert np.sqrt((diff**2).mean() / (ref**2).mean()) < 0.01
    assert np.abs(diff).max() < 5e-3


def test_effects_by_hand_and_tensor_layout():
    """Hand-worked values: the mean of two channels, -6.0206 dB = x 0.5, normalising a peak of 0.25 to 0 dB."""
    wav = torch.tensor([[0.2, -0.1, 0.25], [0.0, 0.1, -0.05]])
    mono, rate = apply_effects_tensor(wav, 8000, [["channels", "1"]])
    assert rate == 8000 and torch.allclose(mono, torch.tensor([[0.1, 0.0, 0.1]]))
    half, _ = apply_effects_tensor(wav, 8000, [["gain", f"{20 * np.log10(0.5)}"]])
    assert torch.allclose(half, wav * 0.5)
    normed, _ = apply_effects_tensor(wav.T, 8000, [["norm"]], channels_first=False)
    assert normed.shape == (3, 2) and torch.allclose(normed, wav.T * 4)
    resampled, rate = apply_effects_tensor(torch.randn(2, 8000), 8000, [["rate", "16k"]])
    assert rate == 16000 and resampled.shape == (2, 16000)


def test_unimplemented_effect_is_named(tmp_path):
    path = write_wav(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32))
    with pytest.raises(MaebenchError) as err:
        apply_effects_file(path, [["channels", "1"], ["vad", "-T", "0.25"]])
    one_line_error(err, "'vad -T 0.25'", "not implemented", "channels, rate, gain, norm, silence")
    with pytest.raises(MaebenchError) as err:
        apply_effects_tensor(torch.zeros(1, 10), 16000, [["gain", "-l", "3"]])
    one_line_error(err, "'gain -l 3'")
    with pytest.raises(MaebenchError) as err:
        apply_effects_file(tmp_path / "missing.wav", [["channels", "1"]])
    one_line_error(err, "missing.wav")


# ---------------------------------------------------------------------------------------------------------------
# s3prl's own SUPERB downstream experts through the legacy runner
# ---------------------------------------------------------------------------------------------------------------

STEPS = 4
# the shape of s3prl's downstream/<task>/config.yaml (SUPERB), with a tiny budget; `datarc` paths filled per test
RUNNER = {"total_steps": STEPS, "gradient_clipping": 1, "gradient_accumulate_steps": 1, "log_step": STEPS,
          "eval_step": STEPS, "save_step": STEPS, "max_keep": 1, "eval_dataloaders": ["dev", "test"]}
OPTIMIZER = {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": 1.0e-3}
MODEL = {"projector_dim": 32, "select": "UtteranceLevel", "UtteranceLevel": {"pooling": "MeanPooling"}}


def superb_config(path: Path, datarc: dict) -> Path:
    config = {"runner": RUNNER, "optimizer": OPTIMIZER,
              "downstream_expert": {"datarc": {"num_workers": 0, **datarc}, "modelrc": MODEL}}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def s3prl_ready():
    pytest.importorskip("s3prl", reason="install the s3prl extra: pip install 'maebench[s3prl]'")
    pytest.importorskip("librosa", reason="install the s3prl extra: pip install 'maebench[s3prl]'")


# the launcher with catalyst made unimportable (as `import catalyst` is wherever it is not installed); after the run it
# prints where the DistributedSamplerWrapper that s3prl's speech_commands expert imported came from
WITHOUT_CATALYST = """import sys
sys.modules["catalyst"] = None
from maebench.s3prl_runner import main
code = main()
expert = sys.modules["s3prl.downstream.speech_commands.expert"]
print("wrapper from", expert.DistributedSamplerWrapper.__module__)
sys.exit(code)
"""


def run_legacy(tmp_path: Path, downstream: str, config: Path, launcher: tuple[str, ...] = ("-m", "maebench.s3prl"),
               ) -> tuple[dict[str, float], str]:
    """Train STEPS steps of `downstream` with a 2-layer tiny MAE-AST preset: the dev/test accuracies it logged, and
    its standard output."""
    options = tmp_path / "upstream.yaml"
    options.write_text("depth: 2\n")
    expdir = tmp_path / "exp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MAEBENCH_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, *launcher, "-m", "train", "-d", downstream, "-c", str(config),
         "-k", "mae_ast_frame:tiny", "-g", str(options), "-p", str(expdir), "--device", "cpu", "--seed", "0"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert (expdir / f"states-{STEPS}.ckpt").is_file()
    log = (expdir / "log.log").read_text()
    scores = {m.group(1): float(m.group(2)) for m in re.finditer(rf"(\w+) at step {STEPS}: ([\d.]+)", log)}
    assert {"dev", "test"} <= set(scores), log
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    return scores, out.stdout


@pytest.mark.slow
def test_speech_commands_ks1_trains_and_evaluates(s3prl_ready, tmp_path):
    from maebench.downstream.datasets import build_toy

    root = build_toy("ks1", tmp_path / "ks1")
    config = superb_config(tmp_path / "ks1.yaml", {
        "speech_commands_root": str(root / "speech_commands_v0.01"),
        "speech_commands_test_root": str(root / "speech_commands_test_set_v0.01"), "batch_size": 8})
    # every item went through apply_effects_file; catalyst hidden, its sampler wrapper came from maebench
    _, stdout = run_legacy(tmp_path, "speech_commands", config, launcher=("-c", WITHOUT_CATALYST))
    assert "wrapper from maebench.catalyst_compat" in stdout


@pytest.mark.slow
def test_voxceleb1_sid_trains_and_evaluates(s3prl_ready, tmp_path):
    from maebench.downstream.datasets import build_toy

    root = build_toy("sid", tmp_path / "sid")
    config = superb_config(tmp_path / "sid.yaml", {
        "file_path": str(root), "meta_data": str(root / "iden_split.txt"), "max_timestep": 32000,
        "train_batch_size": 4, "eval_batch_size": 1})
    run_legacy(tmp_path, "voxceleb1", config)
    # the file lists were cached under maebench's cache, keyed by this dataset, not in s3prl's package folder
    lists = list((tmp_path / "cache" / "s3prl" / "voxceleb1").glob("*/train.pkl"))
    assert len(lists) == 1


@pytest.mark.slow
def test_emotion_er_trains_and_evaluates(s3prl_ready, tmp_path):
    from s3prl.downstream.emotion.IEMOCAP_preprocess import main as iemocap_preprocess

    from maebench.downstream.datasets import build_toy

    root = build_toy("er", tmp_path / "er")
    iemocap_preprocess(str(root))  # s3prl's own script writes meta_data/SessionK/{train,test}_meta_data.json
    config = superb_config(tmp_path / "er.yaml", {
        "root": str(root), "meta_data": str(root / "meta_data"), "test_fold": "fold1", "pre_load": True,
        "valid_ratio": 0.2, "train_batch_size": 4, "eval_batch_size": 4})
    run_legacy(tmp_path, "emotion", config)


def test_missing_downstream_module_is_a_one_line_error(monkeypatch):
    import importlib.util

    from maebench.s3prl_runner import check_downstream_modules

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "librosa" else real(name, *a))
    with pytest.raises(MaebenchError) as err:
        check_downstream_modules("voxceleb1")
    one_line_error(err, "librosa", "pip install 'maebench[s3prl]'")
    check_downstream_modules("speech_commands")  # catalyst is stood in for, not required
    check_downstream_modules("example")  # nothing extra needed
