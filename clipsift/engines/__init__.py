"""Where embedding runs: `base` (the Engine protocol, EmbedResult), `local` (decode workers
+ one encoder on this machine) and `ray_engine` (Ray Data tasks and actors on a cluster).

Example:
    >>> with make_engine("local", workers=2) as engine:
    ...     for batch in engine.embed(model, iter_items(["photos/"]), batch_size=64):
    ...         ...
"""

from __future__ import annotations

from clipsift.engines.base import ENGINES, EmbedResult, Engine, PipelineStats
from clipsift.errors import UsageError

__all__ = ["ENGINES", "EmbedResult", "Engine", "PipelineStats", "engine_or_local",
           "make_engine"]


def make_engine(name: str = "local", *, workers: int | None = None,
                ray_address: str | None = None, ray_cpus: int | None = None,
                encoders: int = 1, fast_decode: bool = False) -> Engine:
    """An engine by name.

    Args:
        name: "local" or "ray".
        workers: local decode processes (local engine only).
        ray_address: an existing Ray cluster ("auto", "ray://host:10001"); None starts a
            local Ray owned by the engine and shut down by `close()`.
        ray_cpus: CPUs of the local Ray (None: all of this machine's).
        encoders: encoder actors, each holding one copy of the model (ray only).
        fast_decode: decode large JPEGs at reduced scale (faster, approximate vectors);
            default False decodes every image whole, exactly. The engine's `decode_mode`
            ("exact" / "fast") says which, to be recorded with results.

    Raises:
        UsageError: unknown engine name, or Ray is not installed.
    """
    if name == "local":
        from clipsift.engines.local import LocalEngine

        return LocalEngine(workers, fast_decode)
    if name == "ray":
        from clipsift.engines.ray_engine import RayEngine

        return RayEngine(address=ray_address, num_cpus=ray_cpus, encoders=encoders,
                         fast_decode=fast_decode)
    raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")


def engine_or_local(engine: Engine | None, workers: int | None = None,
                    fast_decode: bool = False) -> Engine:
    """The engine a bulk verb runs on: `engine` when given, else a `LocalEngine` with
    `workers` and `fast_decode` (what the verbs' own parameters ask for).

    Raises:
        UsageError: `fast_decode` asked for with an engine that decodes exactly (set it on
            the engine: `make_engine(..., fast_decode=True)`).
    """
    if engine is None:
        from clipsift.engines.local import LocalEngine

        return LocalEngine(workers, fast_decode)
    if fast_decode and engine.decode_mode != "fast":
        raise UsageError(f"fast_decode=True, but the {engine.name} engine given decodes "
                         f"{engine.decode_mode!r}: make the engine with fast_decode=True")
    return engine
