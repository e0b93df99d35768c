"""Native checkpoints and the registry: round trips, atomic replacement, fingerprints, presets, clear errors."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
from helpers import one_line_error
from safetensors.torch import load_file, save_file

import maebench.upstream as upstream
from maebench.errors import MaebenchError
from maebench.upstream import checkpoint, registry
from maebench.upstream.mae_ast import MaeAst

SMALL = {"dim": 32, "num_heads": 2, "ffn_dim": 64, "depth": 2, "decoder_depth": 1}


def small(name: str = "mae_ast_patch:tiny", **overrides) -> MaeAst:
    model = registry.preset(name, **{**SMALL, **overrides})
    with torch.no_grad():  # non-default buffers, so a round trip that dropped them would show
        model.batch_norm.running_mean.fill_(-5.0)
        model.batch_norm.running_var.fill_(16.0)
    return model.eval()


def clip() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wavs = torch.randn(2, 12_000, generator=g) * 0.1
    return wavs, torch.tensor([12_000, 9_000])


def features(model) -> list[torch.Tensor]:
    with torch.no_grad():
        return model(*clip()).hidden_states




# ---- round trips -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mae_ast_patch:tiny", "mae_ast_frame:tiny"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, name):
    model = small(name)
    path = upstream.save_upstream(model, tmp_path / "ckpt", provenance={"note": "unit test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = upstream.load(path)
    assert isinstance(loaded, MaeAst) and not loaded.training
    assert loaded.to_config() == model.to_config()
    for a, b in zip(features(model), features(loaded), strict=True):
        assert torch.equal(a, b)
    assert registry.fingerprint(loaded) == registry.fingerprint(model)

    meta = json.loads((path / "config.json").read_text())
    assert meta["format"] == "maebench-upstream" and meta["format_version"] == 1
    assert meta["family"] == "mae_ast" and meta["config"] == model.to_config()
    assert meta["frontend"]["window_type"] == "povey" and meta["frontend"]["num_mel_bins"] == 128
    assert meta["provenance"]["note"] == "unit test" and meta["provenance"]["maebench_version"]
    assert "created" in meta["provenance"]
    assert set(load_file(str(path / "model.safetensors"))) == set(model.state_dict())


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = upstream.save_upstream(small(), tmp_path / "ckpt")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    upstream.load(path)


def test_overrides_apply_to_native_checkpoints(tmp_path):
    path = upstream.save_upstream(small(), tmp_path / "ckpt")
    assert upstream.load(path, dropout=0.0).config.dropout == 0.0
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(path, dim=64)  # changes the architecture: the weights no longer fit
    one_line_error(excinfo, "model.safetensors", "shape")


def test_replacing_a_checkpoint_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    first, second = small(), small()
    upstream.save_upstream(first, target)
    upstream.save_upstream(second, target)  # replace in place
    assert registry.fingerprint(upstream.load(target)) == registry.fingerprint(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or backup dirs left behind

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        upstream.save_upstream(first, target)
    monkeypatch.undo()
    assert registry.fingerprint(upstream.load(target)) == registry.fingerprint(second)  # old one intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_folder_with_other_files_is_never_replaced(tmp_path):
    """save_upstream into a user's folder (or onto a file) refuses instead of deleting what is there."""
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(MaebenchError) as excinfo:
        upstream.save_upstream(small(), folder)
    one_line_error(excinfo, "my_project", "not a maebench checkpoint")
    assert (folder / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(MaebenchError):
        upstream.save_upstream(small(), a_file)
    assert a_file.read_bytes() == b"x"


def test_shared_tensors_are_saved(tmp_path):
    model = small()
    state = dict(model.state_dict())
    state["alias"] = state["patch_embed.weight"]  # two names, one storage: safetensors refuses that unless cloned
    path = checkpoint.write_checkpoint(tmp_path / "c", family="mae_ast", config=model.to_config(), state_dict=state)
    tensors = checkpoint.read_weights(path)
    assert torch.equal(tensors["alias"], tensors["patch_embed.weight"])


def test_run_directory_loads_newest_step(tmp_path):
    run = tmp_path / "run"
    older, newer = small(), small()
    upstream.save_upstream(older, run / "checkpoints" / "step_00000100")
    upstream.save_upstream(newer, run / "checkpoints" / "step_00000200")
    (run / "checkpoints" / ".step_00000300.tmp-x").mkdir()  # an interrupted write is ignored
    (run / "checkpoints" / "step_00000400").mkdir()  # so is a directory without config.json
    assert registry.fingerprint(upstream.load(run)) == registry.fingerprint(newer)
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(empty)
    one_line_error(excinfo, "empty_run", "no checkpoints")


def test_fingerprint_tracks_every_weight():
    model = small()
    before = registry.fingerprint(model)
    assert registry.fingerprint(model) == before
    with torch.no_grad():
        model.encoder[1].mlp.fc2.bias[3] += 1e-6
    changed = registry.fingerprint(model)
    assert changed != before
    with torch.no_grad():
        model.batch_norm.running_var[0] += 1.0  # buffers count too
    assert registry.fingerprint(model) != changed
    assert len(before) == 64


# ---- presets ---------------------------------------------------------------------------------------------------
def test_preset_parsing():
    assert registry.preset_config("mae_ast_patch") == (
        "mae_ast",
        {"dim": 768, "num_heads": 12, "ffn_dim": 3072, "tokenizer": "patch", "mask_type": "chunk"},
    )
    family, config = registry.preset_config("mae_ast_frame:small", mask_ratio=0.5)
    assert family == "mae_ast" and config["dim"] == 384 and config["num_heads"] == 6 and config["ffn_dim"] == 1536
    assert config["tokenizer"] == "frame" and config["mask_type"] == "random" and config["mask_ratio"] == 0.5
    assert registry.preset_config("ssast_patch:tiny") == (
        "ssast",
        {"dim": 192, "num_heads": 3, "ffn_dim": 768, "tokenizer": "patch"},
    )
    model = upstream.load("mae_ast_frame:tiny", depth=2)
    assert not model.training and registry.preset("mae_ast_frame:tiny", depth=2).training
    assert model.config.dim == 192 and model.config.depth == 2 and model.config.decoder_depth == 2


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("mae_ast_patchy", "not a preset"),
        ("mae_ast_patch:huge", "unknown size 'huge'"),
        ("/no/such/dir/ckpt", "/no/such/dir/ckpt"),
    ],
)
def test_bad_specs(spec, needle):
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(spec)
    one_line_error(excinfo, needle)


def test_bad_config_fields_and_families():
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load("mae_ast_patch:tiny", layers=3)
    one_line_error(excinfo, "layers")
    with pytest.raises(MaebenchError) as excinfo:
        registry.build("wav2vec2", {})
    one_line_error(excinfo, "wav2vec2", "mae_ast")


def test_regular_file_goes_to_the_official_loader(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(junk)
    one_line_error(excinfo, str(junk))


def test_import_and_load_in_a_fresh_interpreter():
    code = "import maebench.upstream as u; m = u.load('mae_ast_patch:tiny'); print(type(m).__name__, m.num_layers)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["MaeAst", "12"]


# ---- damaged and foreign files ---------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    return upstream.save_upstream(small(), tmp_path / "ckpt")


def _edit_config(path, **changes):
    meta = json.loads((path / "config.json").read_text())
    meta.update(changes)
    (path / "config.json").write_text(json.dumps(meta))


def _edit_weights(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_truncated_safetensors(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, str(weights), "safetensors")


def test_garbage_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "model.safetensors")


def test_missing_weights_file(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "model.safetensors", "no such file")


def test_bad_json(saved):
    (saved / "config.json").write_text('{"format": "maebench-upstream", ')
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, str(saved / "config.json"), "not valid JSON")


def test_foreign_json(saved):
    (saved / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 768}))
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "config.json", "not a maebench upstream checkpoint")


def test_newer_format_version(saved):
    _edit_config(saved, format_version=2)
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "config.json", "format_version 2")


def test_wrong_family(saved):
    _edit_config(saved, family="hubert")
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "config.json", "hubert")


def test_bad_config_field_in_file(saved):
    meta = json.loads((saved / "config.json").read_text())
    _edit_config(saved, config={**meta["config"], "tokenizer": "wavelet"})
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "config.json", "wavelet")


def test_different_frontend(saved):
    meta = json.loads((saved / "config.json").read_text())
    _edit_config(saved, frontend={**meta["frontend"], "window_type": "hanning"})
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "config.json", "window_type")


def test_missing_key(saved):
    _edit_weights(saved, lambda t: t.pop("encoder.1.attn.qkv.weight"))
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "model.safetensors", "missing weight 'encoder.1.attn.qkv.weight'")


def test_unexpected_key(saved):
    _edit_weights(saved, lambda t: t.update({"encoder.7.attn.qkv.weight": torch.zeros(3)}))
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "model.safetensors", "unexpected weight 'encoder.7.attn.qkv.weight'")


def test_wrong_shape(saved):
    _edit_weights(saved, lambda t: t.update({"recon_head.bias": torch.zeros(255)}))
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(saved)
    one_line_error(excinfo, "model.safetensors", "'recon_head.bias'", "(255,)", "(256,)")


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(tmp_path / "stuff")
    one_line_error(excinfo, "stuff", "neither")


def test_official_support_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "maebench.upstream.official", None)  # as if the module were not there
    junk = tmp_path / "model.pth"
    junk.write_bytes(b"PK\x03\x04")
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load(junk)
    one_line_error(excinfo, str(junk), "official checkpoint support is not installed")


def test_ssast_presets_build_through_the_registry(tmp_path):
    pytest.importorskip("maebench.upstream.ssast")
    model = registry.preset("ssast_frame:tiny", depth=1)
    assert model.family == "ssast" and model.to_config()["dim"] == 192 and model.to_config()["tokenizer"] == "frame"
    loaded = upstream.load(upstream.save_upstream(model, tmp_path / "ssast"))
    assert registry.fingerprint(loaded) == registry.fingerprint(model)


# ---- one vocabulary across the families; 0.1.0 names still read ----------------------------------------------
# The "config" object of config.json exactly as maebench 0.1.0 wrote it (its field names and values) for
# `preset("mae_ast_patch:tiny", encoder_layers=2, decoder_layers=1)` and `preset("ssast_patch:tiny", depth=2,
# target_frames=128)`.
CONFIG_0_1_0 = {
    "mae_ast_patch:tiny": {
        "tokenizer": "patch", "dim": 192, "num_heads": 3, "ffn_dim": 768, "encoder_layers": 2, "decoder_layers": 1,
        "dropout": 0.1, "attn_dropout": 0.1, "activation_dropout": 0.0, "layerdrop": 0.05, "mask_ratio": 0.75,
        "mask_type": "chunk", "shared_mask": False, "chunk_min_side": 3, "chunk_max_side": 5, "recon_weight": 10.0,
        "nce_weight": 1.0,
    },
    "ssast_patch:tiny": {
        "tokenizer": "patch", "dim": 192, "num_heads": 3, "ffn_dim": 768, "depth": 2, "fshape": 16, "tshape": 16,
        "target_frames": 128, "num_masked": 50, "mask_type": "cluster", "mask_min_side": 3, "mask_max_side": 5,
        "pretrain_mode": "two_pass", "norm_mean": -4.2677393, "norm_std": 4.5689974, "fstride": 10, "tstride": 10,
        "window_secs": 1.0,
    },
}
# 0.1.0 wrote its per-clip chunk masks explicitly (shared_mask false); today's default shares one per batch
NEW_ARGS = {"mae_ast_patch:tiny": {"depth": 2, "decoder_depth": 1, "shared_mask": False},
            "ssast_patch:tiny": {"depth": 2, "target_frames": 128}}
OLD_NAMES = {"encoder_layers", "decoder_layers", "chunk_min_side", "chunk_max_side"}


@pytest.mark.parametrize("name", sorted(CONFIG_0_1_0))
def test_a_0_1_0_config_json_loads_to_the_same_model(tmp_path, name):
    torch.manual_seed(0)
    model = registry.preset(name, **NEW_ARGS[name]).eval()
    assert not OLD_NAMES & set(model.to_config()) and model.to_config()["mask_type"] == "chunk"
    directory = upstream.save_upstream(model, tmp_path / "ckpt")
    meta = json.loads((directory / "config.json").read_text())
    _edit_config(directory, config=CONFIG_0_1_0[name], provenance={**meta["provenance"], "maebench_version": "0.1.0"})
    loaded = upstream.load(directory)
    assert loaded.to_config() == model.to_config()
    assert registry.fingerprint(loaded) == registry.fingerprint(model)
    for a, b in zip(features(loaded), features(model), strict=True):
        assert torch.equal(a, b)
    # overrides on top of the old file, in the new names and in the old ones
    assert upstream.load(directory, mask_max_side=4).config.mask_max_side == 4
    assert upstream.load(directory, mask_type="random").config.mask_type == "random"
    if name.startswith("mae_ast"):
        assert upstream.load(directory, chunk_max_side=4).config.mask_max_side == 4


@pytest.mark.parametrize("name", ["mae_ast_patch:tiny", "ssast_patch:tiny"])
def test_one_override_name_means_the_same_for_both_families(name):
    shared = {"depth": 3, "dim": 64, "num_heads": 4, "ffn_dim": 96, "mask_type": "random", "mask_min_side": 2,
              "mask_max_side": 4}
    model = registry.preset(name, **shared)
    assert {key: model.to_config()[key] for key in shared} == shared
    assert model.num_layers == 3 and len(features(model.eval())) == 3
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 96]
    encoder_blocks = 3 + (model.config.decoder_depth if name.startswith("mae_ast") else 0)
    assert len(linears) == encoder_blocks  # one MLP of width ffn_dim per block
    chunked = registry.preset(name, mask_type="chunk", mask_min_side=2, mask_max_side=2)
    assert chunked.config.mask_type == "chunk" and chunked.config.mask_max_side == 2


def test_old_override_names_are_mapped_in_one_place():
    from maebench.upstream.vocabulary import LEGACY_NAMES

    assert set(LEGACY_NAMES["mae_ast"]) == OLD_NAMES
    old = registry.preset("mae_ast_patch:tiny", encoder_layers=3, decoder_layers=1, chunk_min_side=2, chunk_max_side=4)
    new = registry.preset("mae_ast_patch:tiny", depth=3, decoder_depth=1, mask_min_side=2, mask_max_side=4)
    assert old.to_config() == new.to_config()
    assert registry.preset("ssast_patch:tiny", mask_type="cluster", depth=1).config.mask_type == "chunk"
    assert registry.preset("mae_ast_frame:tiny", mask_type="auto").config.mask_type == "random"
    same = registry.preset("mae_ast_patch:tiny", depth=3, encoder_layers=3)  # both names agreeing is fine
    assert same.config.depth == 3
    with pytest.raises(MaebenchError) as excinfo:
        registry.preset("mae_ast_patch:tiny", depth=2, encoder_layers=3)
    one_line_error(excinfo, "encoder_layers", "depth")
    with pytest.raises(MaebenchError) as excinfo:
        upstream.load("ssast_patch:tiny", encoder_layers=3)  # SSAST never had that name
    one_line_error(excinfo, "encoder_layers")
