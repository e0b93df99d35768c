"""torch.hub entry points: `torch.hub.load("<owner>/maebench", "mae_ast_patch", size="base")` or, for any checkpoint,
`torch.hub.load(repo, "maebench_local", ckpt="runs/my_run")`. Each returns a maebench Upstream:
`model(wavs[B, N], lens[B]) -> Features(hidden_states=[(B, T, D)] * layers, lens)`.

Presets are freshly initialised architectures (no weights are downloaded, ever); pretrained weights come from your
own runs or the official SSAST/MAE-AST files through `maebench_local`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchaudio", "safetensors"]  # what `maebench.upstream.load` and a forward import

_ROOT = Path(__file__).resolve().parent


def _ensure_maebench() -> None:
    """Make `maebench.upstream` importable from a plain clone (torch.hub does not pip-install the repository):
    the package maps upstream/ and downstream/ under maebench/, which only an install sets up."""
    try:
        import maebench.upstream  # noqa: F401  (installed, or editable)

        return
    except ModuleNotFoundError:
        pass
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    import maebench

    for name, folder in (("maebench.upstream", "upstream"), ("maebench.downstream", "downstream")):
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(
            name, _ROOT / folder / "__init__.py", submodule_search_locations=[str(_ROOT / folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(maebench, name.rsplit(".", 1)[1], module)


def _preset(name: str, size: str, overrides: dict[str, Any]):
    _ensure_maebench()
    from maebench.upstream import load

    return load(f"{name}:{size}", **overrides)


def mae_ast_patch(size: str = "base", **overrides: Any):
    """MAE-AST, 16x16 patch tokens, chunk masking; size tiny | small | base; overrides = MaeAstConfig fields
    (the vocabulary both families share: depth, dim, num_heads, ffn_dim, mask_type, ...)."""
    return _preset("mae_ast_patch", size, overrides)


def mae_ast_frame(size: str = "base", **overrides: Any):
    """MAE-AST, 128x2 frame tokens, random masking; size tiny | small | base."""
    return _preset("mae_ast_frame", size, overrides)


def ssast_patch(size: str = "base", **overrides: Any):
    """SSAST, 16x16 patches (stride 10 features); size tiny | small | base; overrides = SsastConfig fields
    (the vocabulary both families share: depth, dim, num_heads, ffn_dim, mask_type, ...)."""
    return _preset("ssast_patch", size, overrides)


def ssast_frame(size: str = "base", **overrides: Any):
    """SSAST, 128x2 frames (time stride 1 features); size tiny | small | base."""
    return _preset("ssast_frame", size, overrides)


def maebench_local(ckpt: str, **options: Any):
    """Any checkpoint maebench loads: a checkpoint or training-run directory, an official SSAST .pth or MAE-AST .pt
    file, or a preset name; options are load overrides (e.g. window_secs=6.0 for SSAST)."""
    _ensure_maebench()
    from maebench.upstream import load

    return load(ckpt, **options)
