"""Official SSAST `.pth` and MAE-AST fairseq `.pt` checkpoints, converted in memory into maebench models.

Why this exists: users compare their own pretraining against the released checkpoints, and those files are
pickles. Opening a pickle can run arbitrary code, so nothing here ever imports fairseq, timm or s3prl, and no
pickled callable outside a small allow-list is ever called:

1. the format is recognised by content (zip or pickle magic, then the key set), never by file name;
2. `torch.load(weights_only=True)` is tried first;
3. files that also hold plain Python objects (fairseq cfgs with argparse/omegaconf objects or enums, training
   meters) go through an allow-list unpickler: containers, numbers, strings and torch's tensor rebuild functions
   are real; classes of a few known data-only packages become inert records that are never executed; any other
   global (os.system, builtins.eval, ...) stops the load before anything is called.

Weights are renamed/fused into our parameter layout, checked key by key and shape by shape (missing keys,
unexpected keys or shapes and truncated files are one-line MaebenchErrors naming the key), upcast to float32 and
loaded strictly: a model is never left with random weights.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import hashlib
import pickle
import re
import types
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maebench.errors import MaebenchError

from .checkpoint import check_finite
from .interface import Upstream
from .vocabulary import merged

__all__ = [
    "MAE_AST_FORMAT",
    "SSAST_FORMAT",
    "OpaqueObject",
    "convert",
    "convert_mae_ast",
    "convert_ssast",
    "detect_format",
    "load_official",
    "read_checkpoint",
    "sha256_file",
]

SSAST_FORMAT = "ssast_pth"
MAE_AST_FORMAT = "mae_ast_fairseq"

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # pickle protocol >= 2 opcode: torch's legacy (non-zip) format starts with it

# ------------------------------------------------------------------------------------------------------------------
# Reading: weights_only first, then the allow-list unpickler
# ------------------------------------------------------------------------------------------------------------------

# Packages whose pickled classes (configs, enums, meters, numpy scalars) may appear in a checkpoint's metadata.
# Their globals are replaced by inert stand-ins: the real classes are never imported, so no code of theirs runs.
_INERT_PACKAGES = frozenset({"fairseq", "omegaconf", "argparse", "enum", "numpy", "pathlib", "typing"})
_PLAIN_BUILTINS = ("list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
                   "bytearray", "bool", "slice", "object")


class OpaqueObject:
    """Inert stand-in for a pickled object whose class is not imported: it only records what the pickle held
    (constructor arguments and state) so `plain()` can turn configs into dicts."""

    _origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> OpaqueObject:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_kwargs"] = kwargs
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<opaque {self._origin}>"


@cache
def _inert_class(module: str, name: str) -> type[OpaqueObject]:
    return type(name, (OpaqueObject,), {"_origin": f"{module}.{name}", "__module__": __name__})


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle references code outside the allow-list; raised before that code could be called."""

    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


@lru_cache(maxsize=1)
def _allowed_globals() -> dict[str, Any]:
    """Real objects the unpickler may hand out: torch's own weights-only allow-list (tensor/storage rebuild
    functions, dtypes, Size, Parameter, OrderedDict) plus plain builtin containers and copyreg's reconstructor."""
    import collections
    import copyreg

    allowed: dict[str, Any] = {}
    try:
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved; keep the essentials
        allowed.update({
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
            "torch.nn.parameter.Parameter": torch.nn.Parameter,
            "torch.Size": torch.Size,
        })
    import builtins

    for name in _PLAIN_BUILTINS:
        allowed[f"builtins.{name}"] = getattr(builtins, name)
    allowed["collections.OrderedDict"] = collections.OrderedDict
    allowed["collections.defaultdict"] = collections.defaultdict
    allowed["copyreg._reconstructor"] = copyreg._reconstructor
    return allowed


class RefusedMutation(pickle.UnpicklingError):
    """The pickle tries to set state on a class, function or module (e.g. BUILD on `collections.Counter` to
    rebind `most_common`): refused before anything changes, as torch's weights_only unpickler does."""

    def __init__(self, opcode: str, target: Any) -> None:
        self.qualname = f"{opcode} on {getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
        super().__init__(self.qualname)


_SHARED_KINDS = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                 types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType)


def _check_mutable(target: Any, opcode: str) -> None:
    """Only objects this load created may receive state: never a class, function or module (they are shared by
    the whole process), nor an allow-listed global itself (e.g. a torch dtype singleton)."""
    if isinstance(target, _SHARED_KINDS) or id(target) in _allowed_ids():
        raise RefusedMutation(opcode, target)


@lru_cache(maxsize=1)
def _allowed_ids() -> frozenset[int]:
    return frozenset(id(value) for value in _allowed_globals().values())


class _AllowListUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler (its opcodes can be intercepted, the C one's cannot) with an allow-list of
    globals and guarded BUILD / SETITEM(S) / APPEND(S): the object being changed must be one the load made."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles (torch.save's default) spell builtins the Python 2 way: map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        allowed = _allowed_globals().get(qualname)
        if allowed is not None:
            return allowed
        if module.split(".")[0] in _INERT_PACKAGES:
            return _inert_class(module, name)
        raise RefusedGlobal(qualname)

    def load(self) -> Any:
        try:
            return super().load()
        except (IndexError, KeyError) as err:  # what the pure-Python unpickler raises on a malformed stream
            raise pickle.UnpicklingError(f"malformed pickle ({type(err).__name__})") from None


def _guarded(name: str, position: int | None, original: Any) -> Any:
    """The pure-Python handler of opcode `name`, preceded by a check of the object it would change: stack[position],
    or for the MARK-delimited opcodes (position None) the top of the stack below the mark."""

    def handler(self: _AllowListUnpickler) -> None:
        stack = self.stack if position is not None else (self.metastack[-1] if self.metastack else [])
        index = -1 if position is None else position
        if len(stack) >= -index:  # a too-short stack fails in `original` as a malformed pickle
            _check_mutable(stack[index], name)
        original(self)

    return handler


for _opcode, _position in (("BUILD", -2), ("SETITEM", -3), ("SETITEMS", None), ("APPEND", -2), ("APPENDS", None)):
    _byte = getattr(pickle, _opcode)[0]
    _AllowListUnpickler.dispatch[_byte] = _guarded(_opcode, _position, _AllowListUnpickler.dispatch[_byte])


def _allowlist_load(file: Any, **kwargs: Any) -> Any:
    return _AllowListUnpickler(file, **kwargs).load()


# torch.load takes a "pickle module": anything with an Unpickler class and a load function
_ALLOWLIST_PICKLE = types.ModuleType("maebench_allowlist_pickle")
_ALLOWLIST_PICKLE.Unpickler = _AllowListUnpickler  # type: ignore[attr-defined]
_ALLOWLIST_PICKLE.load = _allowlist_load  # type: ignore[attr-defined]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise MaebenchError(f"cannot read checkpoint {path}: {_one_line(err)}") from None
    if head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == _PICKLE_PROTO and 2 <= head[1] <= 5):
        return
    what = "an empty file" if not head else f"a file starting with bytes {head.hex()}"
    raise MaebenchError(
        f"{path} is not a PyTorch checkpoint ({what}); expected an SSAST .pth or MAE-AST .pt file"
    )


def read_checkpoint(path: str | Path) -> Any:
    """The unpickled object of a torch checkpoint file, on CPU, without executing pickled code.

    weights_only=True first; if the file holds non-tensor objects, the allow-list unpickler. Refused globals,
    truncated and foreign files raise MaebenchError.
    """
    path = Path(path)
    _check_magic(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, TypeError, AttributeError, IndexError, KeyError):
        pass  # objects beyond tensors (or a stream torch's unpickler trips on): the allow-list below says which
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise _unreadable(path, err) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_ALLOWLIST_PICKLE)
    except (RefusedGlobal, RefusedMutation) as err:
        raise MaebenchError(
            f"refusing to load {path}: it contains pickled code or objects outside the allow-list "
            f"({err.qualname}); only load checkpoints from sources you trust, and never this one without checking it"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, TypeError, AttributeError) as err:
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: BaseException) -> MaebenchError:
    return MaebenchError(
        f"cannot read checkpoint {path} ({_one_line(err)}); the file is truncated or corrupt: download it again"
    )


def plain(value: Any) -> Any:
    """Containers and inert records -> plain dicts/lists/values (omegaconf nodes and enums become their values,
    argparse namespaces their attribute dicts)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, OpaqueObject):
        state = value._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
            state = {**(state[0] or {}), **state[1]} if isinstance(state[0], Mapping) else state[1]
        if isinstance(state, Mapping):
            if "_content" in state:  # omegaconf container
                return plain(state["_content"])
            if "_val" in state:  # omegaconf value node
                return plain(state["_val"])
            return plain({k: v for k, v in state.items() if not str(k).startswith("_")})
        if len(value._args) == 1:  # enum member or similar: its value
            return plain(value._args[0])
        return repr(value)
    return value


# ------------------------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------------------------


def _ssast_prefix(obj: Any) -> str | None:
    if not isinstance(obj, Mapping):
        return None
    for prefix in ("module.", ""):
        if f"{prefix}v.pos_embed" in obj and f"{prefix}v.patch_embed.proj.weight" in obj:
            return prefix
    return None


def _is_mae_ast(obj: Any) -> bool:
    # post_extract_proj alone would also match wav2vec2/HuBERT fairseq files: require MAE-AST's own keys too
    model = obj.get("model") if isinstance(obj, Mapping) else None
    return (
        isinstance(model, Mapping)
        and "post_extract_proj.weight" in model
        and ("decoder_mask_emb" in model or "batch_norm.running_mean" in model)
        and ("cfg" in obj or "args" in obj)
    )


def detect_format(obj: Any, path: str | Path = "<checkpoint>") -> str:
    """SSAST_FORMAT or MAE_AST_FORMAT from the unpickled content; anything else -> MaebenchError."""
    if _ssast_prefix(obj) is not None:
        return SSAST_FORMAT
    if _is_mae_ast(obj):
        return MAE_AST_FORMAT
    if isinstance(obj, Mapping):
        keys = sorted(str(k) for k in obj)
        if {"model", "optimizer", "step"} <= set(keys) or "trainer_state" in keys:
            hint = "; for a maebench training checkpoint pass its directory (config.json + model.safetensors)"
        else:
            hint = ""
        shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        found = f"a dict with keys {shown}" if keys else "an empty dict"
    else:
        found = f"a {type(obj).__name__}"
    raise MaebenchError(
        f"{path}: not an SSAST .pth (module.v.pos_embed, ...) or MAE-AST fairseq .pt (cfg + model with "
        f"post_extract_proj.weight) checkpoint; found {found}{hint if isinstance(obj, Mapping) else ''}"
    )


# ------------------------------------------------------------------------------------------------------------------
# Shared conversion helpers
# ------------------------------------------------------------------------------------------------------------------


def _require_format(obj: Any, path: Path, wanted: str) -> None:
    """The converters are public: a checkpoint of the other family is named as such, not half-converted."""
    found = detect_format(obj, path)  # raises for anything that is neither format
    if found != wanted:
        names = {SSAST_FORMAT: "an SSAST .pth", MAE_AST_FORMAT: "a MAE-AST fairseq .pt"}
        raise MaebenchError(
            f"{path} is {names[found]} checkpoint, not {names[wanted]} one; "
            "load it with maebench.upstream.load, which detects the format"
        )


def _tensor(state: Mapping[str, Any], key: str, path: Path, shown: str | None = None) -> Tensor:
    """state[key] as float32 (fp16 checkpoints are upcast); `shown` is the key as the file spells it."""
    shown = shown or key
    if key not in state:
        raise MaebenchError(f"{path}: missing key {shown!r}; the checkpoint is incomplete or of another model")
    value = state[key]
    if not isinstance(value, Tensor):
        raise MaebenchError(f"{path}: key {shown!r} holds a {type(value).__name__}, expected a tensor")
    return value.float() if value.is_floating_point() else value


def _load_strict(model: Upstream, converted: dict[str, Tensor], sources: Mapping[str, str], path: Path) -> None:
    """Check names and shapes against the model, then load strictly (nothing stays randomly initialised)."""
    expected = model.state_dict()
    for name, param in expected.items():
        if name not in converted:
            raise MaebenchError(f"{path}: missing key {sources.get(name, name)!r} (needed for {name})")
        got = converted[name]
        if tuple(got.shape) != tuple(param.shape):
            raise MaebenchError(
                f"{path}: key {sources.get(name, name)!r} has shape {tuple(got.shape)}, expected {tuple(param.shape)} "
                "for the architecture the checkpoint describes"
            )
    extra = sorted(set(converted) - set(expected))
    if extra:
        raise MaebenchError(f"{path}: unexpected key {sources.get(extra[0], extra[0])!r} (not part of this model)")
    check_finite(converted, path)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()}, strict=True)


def _reject_leftovers(
    state: Mapping[str, Any], used: set[str], ignored: re.Pattern[str], path: Path, prefix: str = ""
) -> None:
    left = sorted(k for k in state if k not in used and not ignored.fullmatch(k))
    if left:
        raise MaebenchError(
            f"{path}: unexpected key {prefix + left[0]!r}; this checkpoint variant is not supported "
            f"({len(left)} unrecognised key(s))"
        )


# ------------------------------------------------------------------------------------------------------------------
# SSAST
# ------------------------------------------------------------------------------------------------------------------

_SSAST_IGNORED = re.compile(r"p_input_fdim|p_input_tdim|v\.head\..*|v\.head_dist\..*")
_SSAST_BLOCK = re.compile(r"v\.blocks\.(\d+)\..*")
# DeiT widths -> heads (64-dim heads): the head count is not stored in the checkpoint
_DEIT_HEADS = {192: 3, 384: 6, 768: 12}


def convert_ssast(obj: Mapping[str, Any], path: str | Path = "<checkpoint>", **options: Any) -> Upstream:
    """An Ssast upstream from an official SSAST state dict (DataParallel `module.` prefix optional).

    Architecture from the tensors: width from pos_embed, patch shape from the conv kernel (16x16 patch, 128x2
    frame), pretraining grid from p_input_fdim/p_input_tdim checked against pos_embed's rows, depth from the
    blocks, FFN width from fc1. `options` are SsastConfig overrides (window_secs, fstride, tstride, ...).
    """
    from .ssast import NUM_MEL_BINS, NUM_PREFIX_TOKENS, Ssast, SsastConfig

    path = Path(path)
    _require_format(obj, path, SSAST_FORMAT)
    prefix = _ssast_prefix(obj)
    state = {k[len(prefix):]: v for k, v in obj.items() if str(k).startswith(prefix)}

    pos_embed = _tensor(state, "v.pos_embed", path, shown=f"{prefix}v.pos_embed")
    conv = _tensor(state, "v.patch_embed.proj.weight", path, shown=f"{prefix}v.patch_embed.proj.weight")
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise MaebenchError(f"{path}: key {prefix}v.pos_embed has shape {tuple(pos_embed.shape)}, expected (1, N, D)")
    dim = int(pos_embed.shape[-1])
    if conv.dim() != 4 or tuple(conv.shape[:2]) != (dim, 1):
        raise MaebenchError(
            f"{path}: key {prefix}v.patch_embed.proj.weight has shape {tuple(conv.shape)}, expected ({dim}, 1, F, T)"
        )
    fshape, tshape = int(conv.shape[2]), int(conv.shape[3])
    fdim = NUM_MEL_BINS
    if "p_input_fdim" in state:
        fdim = int(_tensor(state, "p_input_fdim", path, shown=f"{prefix}p_input_fdim"))
    if "p_input_tdim" not in state:
        raise MaebenchError(f"{path}: missing key {prefix}p_input_tdim (the pretraining input length)")
    tdim = int(_tensor(state, "p_input_tdim", path, shown=f"{prefix}p_input_tdim"))
    if fdim != NUM_MEL_BINS:
        raise MaebenchError(f"{path}: key {prefix}p_input_fdim is {fdim}; only {NUM_MEL_BINS} mel bins are supported")
    tokens = (fdim // fshape) * (tdim // tshape)
    if pos_embed.shape[1] != NUM_PREFIX_TOKENS + tokens:
        raise MaebenchError(
            f"{path}: key {prefix}v.pos_embed has {pos_embed.shape[1]} rows, expected {NUM_PREFIX_TOKENS + tokens} "
            f"for a {fdim}x{tdim} input in {fshape}x{tshape} patches"
        )
    if dim not in _DEIT_HEADS and "num_heads" not in options:
        raise MaebenchError(
            f"{path}: SSAST width {dim} is not a DeiT size (192/384/768); pass num_heads= to load it"
        )
    depth = 1 + max((int(m.group(1)) for k in state if (m := _SSAST_BLOCK.fullmatch(k))), default=-1)
    if depth < 1:
        raise MaebenchError(f"{path}: missing key {prefix}v.blocks.0.norm1.weight (no transformer blocks)")
    fc1 = _tensor(state, "v.blocks.0.mlp.fc1.weight", path, shown=f"{prefix}v.blocks.0.mlp.fc1.weight")
    ffn_dim = int(fc1.shape[0])
    tokenizer = "frame" if fshape == NUM_MEL_BINS else "patch"
    config: dict[str, Any] = {
        "tokenizer": tokenizer, "dim": dim, "num_heads": _DEIT_HEADS.get(dim, 1), "ffn_dim": ffn_dim,
        "depth": depth, "fshape": fshape, "tshape": tshape, "target_frames": tdim,
    }
    known = {f.name for f in dataclasses.fields(SsastConfig)}
    unknown = sorted(set(merged("ssast", options)) - known)
    if unknown:
        raise MaebenchError(
            f"{path}: invalid SSAST option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
        )
    try:
        model = Ssast(SsastConfig.from_dict(merged("ssast", config, options)))
    except MaebenchError as err:
        raise MaebenchError(f"{path}: {err}") from None

    converted: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    used: set[str] = set()
    for name in model.state_dict():
        official = name if name.startswith(("mask_embed", "cpredlayer", "gpredlayer")) else f"v.{name}"
        converted[name] = _tensor(state, official, path, shown=prefix + official)
        sources[name] = prefix + official
        used.add(official)
    _reject_leftovers(state, used, _SSAST_IGNORED, path, prefix)
    _load_strict(model, converted, sources, path)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------------
# MAE-AST (fairseq)
# ------------------------------------------------------------------------------------------------------------------

_MAE_AST_IGNORED = re.compile(r"layer_norm\.(weight|bias)|encoder_mask_emb|(enc|dec)_sine_pos_embed\.pe")
# token shape (time frames, mel bins) -> our tokenizer name
_MAE_AST_TOKENS = {(16, 16): "patch", (2, 128): "frame"}
# public mask_type -> (our mask_type, one mask shared by the batch)
_MAE_AST_MASKS = {
    "chunk_mask": ("chunk", True),
    "random_mask": ("random", False),
    "random_mask_batched": ("random", True),
    "retain_spans": ("random", False),  # span masking is not implemented here; only pretraining would differ
}
_LAYER_PARTS = {  # fairseq layer parameter -> our Block parameter
    "self_attn_layer_norm": "norm1",
    "self_attn.out_proj": "attn.proj",
    "final_layer_norm": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}


def _mae_ast_cfg(obj: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model cfg, task cfg) as plain dicts: fairseq's `cfg` (dict or DictConfig) or an old `args` namespace."""
    cfg = plain(obj.get("cfg"))
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return dict(cfg["model"]), dict(cfg.get("task") or {})
    args = plain(obj.get("args"))
    if isinstance(args, Mapping) and args:
        return dict(args), dict(args)
    raise MaebenchError(f"{path}: missing key 'cfg.model' (the MAE-AST architecture); the file is incomplete")


def _cfg(model_cfg: Mapping[str, Any], key: str, path: Path, default: Any = None) -> Any:
    if key in model_cfg and model_cfg[key] is not None:
        return model_cfg[key]
    if default is None:
        raise MaebenchError(f"{path}: missing key 'cfg.model.{key}' needed to rebuild the MAE-AST architecture")
    return default


def _mae_ast_config(model_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any], path: Path) -> dict[str, Any]:
    ktime = int(_cfg(model_cfg, "ast_kernel_size_time", path))
    kchan = int(_cfg(model_cfg, "ast_kernel_size_chan", path))
    stime = int(_cfg(model_cfg, "ast_kernel_stride_time", path, ktime))
    schan = int(_cfg(model_cfg, "ast_kernel_stride_chan", path, kchan))
    tokenizer = _MAE_AST_TOKENS.get((ktime, kchan))
    if tokenizer is None or (stime, schan) != (ktime, kchan):
        raise MaebenchError(
            f"{path}: cfg.model token kernel {ktime}x{kchan} with stride {stime}x{schan} is not supported "
            "(patch 16x16 or frame 2x128, stride = kernel)"
        )
    feature_dim = int(task_cfg.get("feature_dim") or 128)
    if feature_dim != 128:
        raise MaebenchError(f"{path}: cfg.task.feature_dim is {feature_dim}; only 128 mel bins are supported")
    unsupported = [
        (key, want) for key, want in
        (("layer_norm_first", False), ("enc_conv_pos", False), ("dec_conv_pos", False), ("use_post_enc_proj", False),
         ("enc_sine_pos", True), ("dec_sine_pos", True))
        if bool(model_cfg.get(key, want)) != want
    ]
    if unsupported:
        key, want = unsupported[0]
        raise MaebenchError(f"{path}: cfg.model.{key}={model_cfg.get(key)} is not supported (only {want})")
    activation = str(model_cfg.get("activation_fn", "gelu"))
    if activation != "gelu":
        raise MaebenchError(f"{path}: cfg.model.activation_fn={activation!r} is not supported (only 'gelu')")
    dim = int(_cfg(model_cfg, "encoder_embed_dim", path))
    if int(model_cfg.get("decoder_embed_dim", dim)) != dim:
        raise MaebenchError(f"{path}: cfg.model.decoder_embed_dim differs from encoder_embed_dim; not supported")
    public_mask = str(task_cfg.get("mask_type", "random_mask"))
    mask_type, shared = _MAE_AST_MASKS.get(public_mask, ("random", False))
    # retain_spans' ratio (e.g. 1.45) counts overlapping spans; its average masked share is the paper's 75%
    mask_ratio = 0.75 if public_mask == "retain_spans" else float(model_cfg.get("random_mask_prob", 0.75))
    return {
        "tokenizer": tokenizer,
        "dim": dim,
        "num_heads": int(_cfg(model_cfg, "encoder_attention_heads", path)),
        "ffn_dim": int(_cfg(model_cfg, "encoder_ffn_embed_dim", path)),
        "depth": int(_cfg(model_cfg, "encoder_layers", path)),
        "decoder_depth": int(_cfg(model_cfg, "decoder_layers", path, 2)),
        "dropout": float(model_cfg.get("dropout", 0.1)),
        "attn_dropout": float(model_cfg.get("attention_dropout", 0.1)),
        "activation_dropout": float(model_cfg.get("activation_dropout", 0.0)),
        "layerdrop": float(model_cfg.get("encoder_layerdrop", 0.0)),
        "mask_ratio": mask_ratio,
        "mask_type": mask_type,
        "shared_mask": shared,
    }


def _mae_ast_weights(
    state: Mapping[str, Any], config: Mapping[str, Any], path: Path
) -> tuple[dict[str, Tensor], dict[str, str], set[str]]:
    converted: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    used: set[str] = set()

    def take(ours: str, theirs: str) -> None:
        converted[ours] = _tensor(state, theirs, path)
        sources[ours] = theirs
        used.add(theirs)

    for suffix in ("weight", "bias"):
        take(f"patch_embed.{suffix}", f"post_extract_proj.{suffix}")
        take(f"encoder_norm.{suffix}", f"encoder.layer_norm.{suffix}")
        take(f"decoder_norm.{suffix}", f"decoder.layer_norm.{suffix}")
        take(f"recon_head.{suffix}", f"final_proj_reconstruction.{suffix}")
        take(f"class_head.{suffix}", f"final_proj_classification.{suffix}")
    for stat in ("running_mean", "running_var", "num_batches_tracked"):
        take(f"batch_norm.{stat}", f"batch_norm.{stat}")
    take("decoder_mask_token", "decoder_mask_emb")
    for stack, layers in (("encoder", config["depth"]), ("decoder", config["decoder_depth"])):
        for i in range(layers):
            theirs, ours = f"{stack}.layers.{i}", f"{stack}.{i}"
            for suffix in ("weight", "bias"):
                for part, mapped in _LAYER_PARTS.items():
                    take(f"{ours}.{mapped}.{suffix}", f"{theirs}.{part}.{suffix}")
                # fused qkv = [q; k; v] along the output dimension, the order Attention splits it in
                names = [f"{theirs}.self_attn.{p}_proj.{suffix}" for p in "qkv"]
                parts = [_tensor(state, n, path) for n in names]
                shapes = {tuple(p.shape) for p in parts}
                if len(shapes) != 1:
                    raise MaebenchError(f"{path}: key {names[1]!r} has shape {tuple(parts[1].shape)}, "
                                        f"unlike {names[0]!r} {tuple(parts[0].shape)}")
                converted[f"{ours}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)
                sources[f"{ours}.attn.qkv.{suffix}"] = names[0]
                used.update(names)
    return converted, sources, used


def _check_sine_tables(state: Mapping[str, Any], dim: int, path: Path) -> None:
    """The model recomputes its sinusoidal positions; make sure the file's tables are those (not learned ones)."""
    from .blocks import sinusoidal_positions

    for key in ("enc_sine_pos_embed.pe", "dec_sine_pos_embed.pe"):
        if key not in state:
            continue
        table = _tensor(state, key, path)
        if table.dim() != 3 or table.shape[-1] != dim:
            raise MaebenchError(f"{path}: key {key!r} has shape {tuple(table.shape)}, expected (1, N, {dim})")
        rows = min(int(table.shape[1]), 4096)
        if not torch.allclose(table[0, :rows], sinusoidal_positions(rows, dim), atol=1e-3):
            raise MaebenchError(f"{path}: key {key!r} is not the standard sinusoidal table; not supported")


def convert_mae_ast(obj: Mapping[str, Any], path: str | Path = "<checkpoint>", **options: Any) -> Upstream:
    """A MaeAst upstream from a fairseq MAE-AST checkpoint dict (`cfg` + `model`), any depth/width its cfg
    describes; fp16 or fp32 tensors. `options` are MaeAstConfig overrides (e.g. dropout)."""
    from .mae_ast import MaeAst, MaeAstConfig

    path = Path(path)
    _require_format(obj, path, MAE_AST_FORMAT)
    model_cfg, task_cfg = _mae_ast_cfg(obj, path)
    config = _mae_ast_config(model_cfg, task_cfg, path)
    state = obj["model"]
    # encoder depth must agree with the tensors (a cfg/weights mismatch would otherwise load a wrong model)
    stored_layers = {int(m.group(1)) for k in state if (m := re.fullmatch(r"encoder\.layers\.(\d+)\..*", str(k)))}
    if stored_layers and max(stored_layers) + 1 != config["depth"]:
        raise MaebenchError(
            f"{path}: cfg.model.encoder_layers={config['depth']} but the weights have "
            f"{max(stored_layers) + 1} encoder layers (key 'encoder.layers.{max(stored_layers)}.fc1.weight')"
        )
    converted, sources, used = _mae_ast_weights(state, config, path)
    _reject_leftovers(state, used, _MAE_AST_IGNORED, path)
    _check_sine_tables(state, config["dim"], path)
    try:
        model = MaeAst(MaeAstConfig.from_dict(merged("mae_ast", config, options)))
    except MaebenchError as err:
        raise MaebenchError(f"{path}: {err}") from None
    _load_strict(model, converted, sources, path)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------------


def load_official(path: str | Path, **options: Any) -> Upstream:
    """Load an official SSAST .pth or MAE-AST fairseq .pt file as a maebench Upstream (eval mode).

    `options` are config overrides of the target model, e.g. `window_secs=6.0` for SSAST.
    """
    path = Path(path)
    return convert(read_checkpoint(path), path, **options)


def convert(obj: Any, path: str | Path = "<checkpoint>", **options: Any) -> Upstream:
    """An already unpickled official checkpoint -> Upstream (format detected from its content)."""
    if detect_format(obj, path) == SSAST_FORMAT:
        return convert_ssast(obj, path, **options)
    return convert_mae_ast(obj, path, **options)
