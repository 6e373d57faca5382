"""Where embedding runs: `base` (the Engine protocol, EmbedResult, make_engine), `local`
(decode workers + one encoder on this machine) and `ray_engine` (Ray Data on a cluster)."""

from clipsift.engines.base import ENGINES, EmbedResult, Engine, LocalEngine, make_engine

__all__ = ["ENGINES", "EmbedResult", "Engine", "LocalEngine", "make_engine"]
