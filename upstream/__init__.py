"""Models: the fbank front end, MAE-AST and SSAST behind the Upstream interface, their registry, checkpoint loading,
and the adapters to the outside (s3prl)."""

from maebench.upstream.interface import Features, PretrainOutput, Upstream

__all__ = ["Features", "PretrainOutput", "Upstream", "load", "save_upstream"]


def __getattr__(name: str):
    # load/save live in the registry, which imports every model family; import them on first use
    if name in ("load", "save_upstream"):
        from maebench.upstream import registry

        return getattr(registry, name)
    raise AttributeError(name)
