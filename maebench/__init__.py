"""maebench: fast MAE-AST / SSAST pretraining and SUPERB-style evaluation of audio upstreams."""

from maebench.errors import MaebenchError

__version__ = "0.1.0"
__all__ = ["MaebenchError", "__version__"]
