"""`clipsift unique`: rank images by how unusual they are in their collection."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.collection import IndexOpt, SourcesArg, collection
from clipsift.cli.common import (
    BatchOpt,
    DeviceOpt,
    EncodersOpt,
    EngineOpt,
    FastDecodeOpt,
    JsonOpt,
    ModelOpt,
    RayAddressOpt,
    RayCpusOpt,
    WorkersOpt,
)
from clipsift.inputs.keys import json_fields, printable


def unique_cmd(
    sources: SourcesArg = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours to average over.")] = 10,
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Rows to print.")] = 20,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write the full ranking as Parquet.")] = None,
    index: IndexOpt = None, model: ModelOpt = None, device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_cpus: RayCpusOpt = None, encoders: EncodersOpt = 1,
    json_out: JsonOpt = False, fast_decode: FastDecodeOpt = False,
) -> None:
    """Rank images by how unusual they are: mean distance to their k nearest neighbours."""
    import json

    from clipsift.sift.unique import uniqueness, write_unique_parquet

    coll = collection(sources, index, model, device, batch_size, engine,
                       (workers, ray_address, ray_cpus, encoders, fast_decode))
    result = uniqueness(coll, k)
    if output:
        write_unique_parquet(result, coll, output)
    for rank, (row, score, near, sim) in enumerate(zip(
            result.order[:top], result.score[:top], result.nearest[:top],
            result.nearest_similarity[:top], strict=True), start=1):
        path, nearest = printable(coll.keys[row]), printable(coll.keys[near])
        if json_out:
            typer.echo(json.dumps({"rank": rank, **json_fields("path", coll.keys[row]),
                                   "uniqueness": round(float(score), 5),
                                   **json_fields("nearest", coll.keys[near]),
                                   "nearest_similarity": round(float(sim), 5)}))
        else:
            typer.echo(f"{rank:4d}  {score:.4f}  {path}  (nearest {sim:.3f}: {nearest})")


def register(app: typer.Typer) -> None:
    app.command("unique")(unique_cmd)
