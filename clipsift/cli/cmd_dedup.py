"""`clipsift dedup`: group near-duplicate images and pick a keeper per group."""

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
from clipsift.inputs.keys import json_fields, json_list_fields, printable


def dedup_cmd(
    sources: SourcesArg = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", "-t", help="Cosine similarity from which images are duplicates "
        "(with 1e-5 tolerance for float rounding: 1.0 groups byte-identical copies).")] = 0.95,
    keep_policy: Annotated[str, typer.Option(
        "--keep-policy", help="Keeper choice, criteria in order: resolution, oldest, newest, "
        "largest-file, smallest-file, path.")] = "resolution,oldest",
    output: Annotated[str, typer.Option("--output", "-o", help="Groups as Parquet (one row "
                                        "per grouped image).")] = "duplicates.parquet",
    html: Annotated[str | None, typer.Option("--html", help="Also write an HTML page of the "
                                             "groups with thumbnails.")] = None,
    method: Annotated[str, typer.Option("--method", help="auto, exact or ivf (approximate, "
                                        "for millions).")] = "auto",
    index: IndexOpt = None, model: ModelOpt = None, device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_cpus: RayCpusOpt = None, encoders: EncodersOpt = 1,
    json_out: JsonOpt = False, fast_decode: FastDecodeOpt = False,
) -> None:
    """Group near-duplicate images (FAISS range search) and pick a keeper per group."""
    from clipsift.cli.output import notice
    from clipsift.sift.dedup import find_duplicates, write_groups_parquet
    from clipsift.sift.dedup_page import write_groups_html

    coll = collection(sources, index, model, device, batch_size, engine,
                       (workers, ray_address, ray_cpus, encoders, fast_decode))
    result = find_duplicates(coll, threshold, keep=keep_policy, method=method)
    path = write_groups_parquet(result, coll, output)
    if html:
        write_groups_html(result, coll, html)
    _print_groups(result, coll, json_out)
    notice(f"dedup: {result.items} images, {len(result.groups)} groups, {result.duplicates} "
           f"duplicates (threshold {threshold}, {result.method} search, "
           f"{result.seconds:.1f} s); groups in {path}" + (f", page {html}" if html else ""))
    if coll.errors:
        notice(f"  {len(coll.errors)} images could not be read (first: "
               f"{printable(coll.errors[0][0])}: {coll.errors[0][1]})")


def _print_groups(result, coll, json_out: bool, limit: int = 20) -> None:
    import json

    for g_id, group in enumerate(result.groups if json_out else result.groups[:limit]):
        if json_out:
            typer.echo(json.dumps({"group": g_id, **json_fields("keeper", coll.keys[group.keeper]),
                                   **json_list_fields("members", [coll.keys[m]
                                                                  for m in group.members]),
                                   "similarity": [round(s, 4) for s in group.similarity]}))
            continue
        typer.echo(f"group {g_id}: keep {printable(coll.keys[group.keeper])}")
        for m, s in zip(group.members[1:], group.similarity[1:], strict=True):
            typer.echo(f"    {s:.3f}  {printable(coll.keys[m])}")
    if not json_out and len(result.groups) > limit:
        typer.echo(f"... {len(result.groups) - limit} more groups in the Parquet file")


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup_cmd)
