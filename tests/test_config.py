"""Pretraining config: dataclass defaults, recipes, typed `--set` overrides, errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from maebench.config import (
    RECIPES_DIR,
    REQUIRED,
    OptimConfig,
    PretrainConfig,
    apply_overrides,
    batch_length,
    check_required,
    config_hash,
    from_dict,
    load_recipe,
    to_yaml,
    validate,
)
from maebench.errors import MaebenchError

PAPER_RECIPES = ["mae_ast_patch_base_paper", "mae_ast_frame_base_paper", "ssast_patch_base_paper",
                 "ssast_frame_base_paper"]


def test_demo_recipe_is_the_default_and_optim_defaults_are_the_papers():
    assert load_recipe("demo_tiny") == PretrainConfig()
    assert load_recipe(RECIPES_DIR / "demo_tiny.yaml") == PretrainConfig()
    cfg = PretrainConfig()
    assert (cfg.model.name, cfg.model.size, cfg.data.source) == ("mae_ast_patch", "tiny", None)
    paper = OptimConfig()
    assert (paper.lr, paper.betas, paper.eps, paper.weight_decay, paper.warmup_steps, paper.clip_grad_norm) == (
        1e-4, (0.9, 0.98), 1e-6, 0.01, 32000, 10.0)
    assert cfg.train.precision == "auto" and cfg.train.compile is False


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_need_data_and_carry_paper_settings(name):
    cfg = load_recipe(name)
    assert cfg.model.name == name.removesuffix("_base_paper") and cfg.model.size == "base"
    assert cfg.data.source == REQUIRED
    assert cfg.optim.lr == 1e-4
    with pytest.raises(MaebenchError, match=r"--data PATH"):
        check_required(cfg)
    filled = apply_overrides(cfg, ["data.source=/data/train.tsv"])
    check_required(filled)
    validate(filled)
    if name.startswith("mae_ast"):
        # MAE-AST-Public README's run commands: 550k updates on one GPU, max_tokens 8,388,608 over sizes capped at
        # max_sample_size 250,000 in multiples of 8 -> 32 clips; clips >= 2 s, batches cropped to the shortest
        assert (cfg.optim.name, cfg.optim.warmup_steps, cfg.train.max_steps) == ("adamw", 32000, 550000)
        assert cfg.train.batch_size == (8_388_608 // 250_000) // 8 * 8 == 32 and cfg.train.seed == 1337
        assert (cfg.data.min_seconds, cfg.data.clip_seconds) == (2.0, 250_000 / 16_000)
        assert (batch_length(cfg), cfg.data.bucket) == ("shortest", True)
    else:  # SSAST keeps its authors' fixed 1024-frame input
        assert (cfg.optim.name, cfg.optim.betas, cfg.train.batch_size) == ("adam", (0.95, 0.999), 24)
        assert cfg.data.clip_seconds == pytest.approx(10.24) and batch_length(cfg) == "fixed"
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# ")  # the comment header says where the settings come from


def test_overrides_are_typed():
    cfg = apply_overrides(PretrainConfig(), [
        "optim.lr=3e-4", "optim.betas=0.9,0.95", "train.max_steps=1e3", "train.compile=true",
        "data.source=null", "data.clip_seconds=2", "model.overrides.depth=6",
        "model.overrides.dropout=0.0", "model.overrides.mask_type=random", "optim.schedule=cosine",
    ])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.compile is True and cfg.data.source is None
    assert cfg.data.clip_seconds == 2.0 and isinstance(cfg.data.clip_seconds, float)
    assert cfg.model.overrides == {"depth": 6, "decoder_depth": 1, "dropout": 0.0, "attn_dropout": 0.0,
                                   "dropout_input": 0.0, "layerdrop": 0.0, "shared_mask": False, "mask_type": "random"}
    assert PretrainConfig().model.overrides["depth"] == 4  # the default was copied, not mutated
    whole = apply_overrides(cfg, ["model.overrides={depth: 2, pretrain_mode: one_pass}"])
    assert whole.model.overrides == {"depth": 2, "pretrain_mode": "one_pass"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr' \(optim has: name, lr,"),
        ("trainer.steps=3", r"unknown config key 'trainer.steps'"),
        ("train.max_steps=1.5", r"train.max_steps='1.5': expected an integer"),
        ("train.max_steps=true", r"expected an integer"),
        ("optim.lr=fast", r"optim.lr='fast': expected a number"),
        ("optim.name=sgd", r"expected one of adam, adamw"),
        ("model.size=huge", r"expected one of tiny, small, base"),
        ("train.compile=maybe", r"expected true or false"),
        ("optim.betas=0.9", r"expected 2 comma-separated values"),
        ("train=3", r"'train' is a section"),
        ("optim.lr", r"expected key=value"),
        ("model.overrides={dim:32}", r"space after each colon"),
    ],
)
def test_override_errors_name_the_key(override, message):
    with pytest.raises(MaebenchError, match=message):
        apply_overrides(PretrainConfig(), [override])


def test_recipe_errors_name_file_and_key(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("optim:\n  lr: 1.0e-3\n  momentum: 0.9\n")
    with pytest.raises(MaebenchError, match=r"bad.yaml.*'optim.momentum'"):
        load_recipe(bad_key)
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [unclosed\n")
    with pytest.raises(MaebenchError, match=r"broken.yaml could not be read as YAML"):
        load_recipe(broken)
    with pytest.raises(MaebenchError, match=r"recipe nosuch not found.*demo_tiny"):
        load_recipe("nosuch")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("train:\n  batch_size: many\n")
    with pytest.raises(MaebenchError, match=r"wrong.yaml train.batch_size='many': expected an integer"):
        load_recipe(wrong_type)


def test_validate_rejects_impossible_values():
    for override, key in [("train.batch_size=0", "train.batch_size"), ("optim.lr=-1", "optim.lr"),
                          ("train.keep_last=0", "train.keep_last"), ("optim.weight_decay=-0.1", "weight_decay")]:
        with pytest.raises(MaebenchError, match=key):
            validate(apply_overrides(PretrainConfig(), [override]))
    with pytest.raises(MaebenchError, match="too short"):
        validate(apply_overrides(PretrainConfig(), ["data.clip_seconds=0.1"]))
    with pytest.raises(MaebenchError, match=r"data.min_seconds=0.1 .*shortest clip.*>= 0.2"):
        validate(apply_overrides(PretrainConfig(), ["data.min_seconds=0.1"]))
    validate(apply_overrides(PretrainConfig(), ["data.min_seconds=0.1", "data.batch_length=fixed"]))  # padded: fine
    with pytest.raises(MaebenchError, match="data.min_seconds"):
        validate(apply_overrides(PretrainConfig(), ["data.min_seconds=-1", "data.batch_length=fixed"]))
    with pytest.raises(MaebenchError, match="expected one of auto, shortest, fixed"):
        apply_overrides(PretrainConfig(), ["data.batch_length=longest"])


def test_batch_length_follows_the_model_family():
    """auto: MAE-AST crops each batch to its shortest clip (the public pad_audio: false), SSAST pads to a fixed
    length (its dataloader); an explicit value wins."""
    assert batch_length(PretrainConfig()) == "shortest"
    assert batch_length(apply_overrides(PretrainConfig(), ["model.name=mae_ast_frame"])) == "shortest"
    assert batch_length(apply_overrides(PretrainConfig(), ["model.name=ssast_frame"])) == "fixed"
    assert batch_length(apply_overrides(PretrainConfig(), ["model.name=ssast_frame", "data.batch_length=shortest"])
                        ) == "shortest"


def test_yaml_round_trip_and_hash():
    cfg = apply_overrides(load_recipe("ssast_frame_base_paper"), ["data.source=x.tsv", "model.overrides.depth=2"])
    text = to_yaml(cfg)
    assert from_dict(yaml.safe_load(text)) == cfg
    assert yaml.safe_load(text)["optim"]["betas"] == [0.95, 0.999]
    # operational fields keep a run resumable; anything that changes the computation changes the hash
    same = apply_overrides(cfg, ["train.log_every=7", "train.ckpt_every=9", "train.keep_last=1", "run_dir=/x",
                                 "data.num_workers=3", "train.compile=true"])
    assert config_hash(same) == config_hash(cfg)
    for change in ["optim.lr=2e-4", "train.max_steps=5", "model.overrides.depth=3", "data.source=y.tsv",
                   "train.seed=1", "data.min_seconds=1", "data.batch_length=shortest", "data.bucket=true"]:
        assert config_hash(apply_overrides(cfg, [change])) != config_hash(cfg), change


def test_every_field_has_a_default_and_is_settable():
    """The dataclasses are the single source of truth: every leaf field can be set from the command line."""
    cfg = PretrainConfig()
    for section in ("model", "data", "optim", "train"):
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, dict):
                continue
            text = ",".join(map(str, value)) if isinstance(value, tuple) else ("null" if value is None else value)
            assert apply_overrides(cfg, [f"{section}.{f.name}={text}"]) == cfg, f.name


def test_short_run_model_defaults_stay_out_of_the_paper_recipes_and_of_ssast():
    """The default's 4-layer, regulariser-free MAE-AST is the default only: a recipe or saved config lists its model
    overrides whole, and SSAST (no decoder, no dropout) keeps only the ones that apply to it."""
    from maebench.config import model_overrides
    from maebench.trainer import build_model

    for name in PAPER_RECIPES:
        assert load_recipe(name).model.overrides == {}
    saved = apply_overrides(PretrainConfig(), ["model.overrides={depth: 2}"])
    assert from_dict(yaml.safe_load(to_yaml(saved))).model.overrides == {"depth": 2}
    ssast = apply_overrides(PretrainConfig(), ["model.name=ssast_patch"])
    assert model_overrides(ssast) == {"depth": 4}
    assert build_model(ssast).config.depth == 4
    mae = build_model(PretrainConfig())
    assert (mae.config.depth, mae.config.decoder_depth, mae.config.dropout, mae.config.layerdrop) == (4, 1, 0.0, 0.0)
    typo = apply_overrides(ssast, ["model.overrides.dropuot=0.0"])  # not a short-run default: still an error
    with pytest.raises(MaebenchError, match="unknown field"):
        build_model(typo)
