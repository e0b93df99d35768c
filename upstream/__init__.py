"""Models: MAE-AST and SSAST behind the Upstream interface, their registry, and checkpoint loading."""

from maebench.upstream.interface import Features, PretrainOutput, Upstream

__all__ = ["Features", "PretrainOutput", "Upstream", "load", "save_upstream"]


def __getattr__(name: str):
    # load/save live in the registry, which imports every model family; import them on first use
    if name in ("load", "save_upstream"):
        from maebench.upstream import registry

        return getattr(registry, name)
    raise AttributeError(name)
