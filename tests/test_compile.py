"""The compiled training path (train.compile) on CPU: the same losses as eager, and a bounded number of compilations
whatever the batch lengths, masks and layerdrop patterns (torch's own counters).

On CPU, compile_blocks has inductor draw dropout through the eager random ops (`fallback_random`), so a compiled
run and an eager run with the same seed draw the same dropout masks and their losses can be compared step by step.
One inductor run (fp32, MAE-AST, the family with variable lengths and layerdrop) exercises the C++ code generation
the way CI's CPUs run it; the bf16 and SSAST runs use dynamo + AOTAutograd without inductor's C++ build
("aot_eager"), which traces, guards and counts the same graphs, to keep the file near a minute on 2 cores.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from helpers import SR, one_thread, speechlike, write_wav  # noqa: F401 (one_thread: a fixture)
from torch._dynamo.utils import counters

from maebench import trainer
from maebench.config import PretrainConfig, apply_overrides, load_recipe
from maebench.upstream.blocks import compile_blocks

pytestmark = pytest.mark.usefixtures("one_thread")

# The budget: one graph for the repeated block (encoder and decoder layers share it); one more is allowed for a
# size-1 dimension, which dynamo specialises. Eight is dynamo's recompile limit, past which it silently runs eager.
COMPILE_BUDGET = 2
# Smallest shapes, many layers so layerdrop patterns vary: MAE-AST layerdrop 0.3 over 4 layers drops at least one
# layer in most steps and a different set each time.
SMALL_MAE_AST = "model.overrides={dim: 32, num_heads: 2, ffn_dim: 64, depth: 4, decoder_depth: 1, layerdrop: 0.3}"
SMALL_SSAST = "model.overrides={dim: 32, num_heads: 2, ffn_dim: 64, depth: 3, target_frames: 64}"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """24 clips of 0.4-1.6 s: batches cropped to their shortest clip have 2 to 9 patch columns."""
    root = tmp_path_factory.mktemp("clips")
    lengths = torch.randint(round(0.4 * SR), round(1.6 * SR), (24,), generator=torch.Generator().manual_seed(3))
    for i, length in enumerate(lengths.tolist()):
        write_wav(root / f"clip_{i:02d}.wav", speechlike(length, seed=i))
    return root


@pytest.fixture
def fresh_dynamo():
    """Empty compile caches and counters."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def run_losses(clips: Path, run_dir: Path, *extra: str) -> list[float]:
    cfg = apply_overrides(PretrainConfig(), [
        f"data.source={clips}", "data.clip_seconds=1.6", "data.num_workers=0", "train.batch_size=4",
        "train.max_steps=6", "train.log_every=1", "train.ckpt_every=6", "train.device=cpu", "optim.lr=2e-3",
        "optim.warmup_steps=2", f"run_dir={run_dir}", *extra,
    ])
    trainer.train(cfg, quiet=True)
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def record_token_counts(monkeypatch) -> list[int]:
    """Watch the sequence lengths the trained model sees (MAE-AST tokens per clip, from its embedding's input)."""
    seen: list[int] = []
    build = trainer.build_model

    def build_and_watch(cfg):
        model = build(cfg)
        model.patch_embed.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
        return model

    monkeypatch.setattr(trainer, "build_model", build_and_watch)
    return seen


def assert_within_budget() -> None:
    assert counters["frames"]["total"] == counters["frames"]["ok"] <= COMPILE_BUDGET, dict(counters["frames"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compiled_mae_ast_training_matches_eager_and_compiles_once(clips, tmp_path, fresh_dynamo, monkeypatch):
    tokens = record_token_counts(monkeypatch)
    eager = run_losses(clips, tmp_path / "eager", SMALL_MAE_AST)
    assert counters["frames"]["total"] == 0  # train.compile is off by default
    compiled = run_losses(clips, tmp_path / "compiled", SMALL_MAE_AST, "train.compile=true")
    assert len(set(tokens)) >= 3, tokens  # the batches really had different lengths
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    assert_within_budget()
    assert counters["frames"]["ok"] >= 1  # and something was compiled


def test_compiled_training_under_bf16_autocast_matches_eager(clips, tmp_path, fresh_dynamo, monkeypatch):
    monkeypatch.setattr(trainer, "compile_blocks", functools.partial(compile_blocks, backend="aot_eager"))
    eager = run_losses(clips, tmp_path / "eager", SMALL_MAE_AST, "train.precision=bf16")
    compiled = run_losses(clips, tmp_path / "compiled", SMALL_MAE_AST, "train.precision=bf16", "train.compile=true")
    assert compiled == pytest.approx(eager, rel=1e-3)
    assert_within_budget()
    fp32 = run_losses(clips, tmp_path / "fp32", SMALL_MAE_AST)
    assert fp32 != pytest.approx(eager, rel=1e-6)  # bf16 autocast really ran


def test_compiled_ssast_training_matches_eager(clips, tmp_path, fresh_dynamo, monkeypatch):
    monkeypatch.setattr(trainer, "compile_blocks", functools.partial(compile_blocks, backend="aot_eager"))
    eager = run_losses(clips, tmp_path / "eager", "model.name=ssast_patch", SMALL_SSAST)
    compiled = run_losses(clips, tmp_path / "compiled", "model.name=ssast_patch", SMALL_SSAST, "train.compile=true")
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert_within_budget()


def test_compile_auto_is_on_for_cuda_only():
    cfg = apply_overrides(PretrainConfig(), ["train.compile=auto"])
    assert cfg.train.compile == "auto"
    assert trainer.resolve_compile(cfg, torch.device("cuda")) is True
    assert trainer.resolve_compile(cfg, torch.device("cpu")) is False
    assert trainer.resolve_compile(apply_overrides(cfg, ["train.compile=yes"]), torch.device("cpu")) is True
    for recipe in ("mae_ast_patch_base_paper", "mae_ast_frame_base_paper", "ssast_patch_base_paper",
                   "ssast_frame_base_paper"):
        assert load_recipe(recipe).train.compile == "auto", recipe
