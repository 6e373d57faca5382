"""`clipsift index`, `search`, `errors` and `export`: build, query and dump an index."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import (
    BatchOpt,
    EncodersOpt,
    EngineOpt,
    FastDecodeOpt,
    JsonOpt,
    ModelOpt,
    RayAddressOpt,
    RayCpusOpt,
    WorkersOpt,
    install_sigint,
    make_engine_for,
)
from clipsift.inputs.keys import json_fields, printable

IndexArg = Annotated[str, typer.Argument(
    help="Index file, or a bare name kept in $CLIPSIFT_INDEX_DIR "
    "(default ~/.local/share/clipsift/indexes).")]
IndexPrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="fp32, fp32-onnx, int8, bf16 or fp16 (see `clipsift embed --help`); "
    "default: the precision the index's vectors were made at (fp32 for a new index). "
    "fp32 and fp32-onnx vectors mix; other precisions need --reembed.",
    envvar="CLIPSIFT_PRECISION")]
ReembedOpt = Annotated[bool, typer.Option(
    "--reembed", help="The index was built with another model (or precision): make this "
    "model the index's model and embed every item again (interrupted runs resume; the "
    "index never mixes both models' vectors).")]


def index_cmd(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders, globs, .tar shards "
                                               "or file lists.")],
    index: Annotated[str, typer.Option("--index", "-i", help="Index file or name (created "
                                       "when missing).")],
    model: ModelOpt = None,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive",
                                            help="Walk sub-folders.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or "
                                        "summary.")] = False,
    precision: IndexPrecisionOpt = None,
    reembed: ReembedOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    encoders: EncodersOpt = 1,
    fast_decode: FastDecodeOpt = False,
) -> None:
    """Add images to an index (incremental: only new or changed files are embedded).

    Only files confirmed gone under the folders given are removed; folders that cannot be
    read are reported and keep their entries (exit 1). Ctrl-C stops after the current
    batch, keeping everything done so far; run the same command again to resume.
    """
    import signal
    import threading

    from clipsift.cli.common import load_model
    from clipsift.cli.output import notice
    from clipsift.index.index import Index, resolve_index_path

    path = resolve_index_path(index)
    if path.exists():  # the named model is checked against the index's (or re-embeds it)
        idx = Index.open(path, model, precision=precision, reembed=reembed)
    else:
        idx = Index(path, load_model(model, precision=precision or "fp32"))
    if idx.notice and not quiet:
        notice(idx.notice)
    stop = threading.Event()
    previous = install_sigint(stop)
    try:
        with make_engine_for(engine, workers, ray_address, ray_cpus, encoders,
                             fast_decode) as eng:
            summary = _run_add(idx, paths, stop, quiet=quiet, batch_size=batch_size,
                               workers=workers, recursive=recursive, engine=eng)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        idx.close()
    if not quiet:
        _print_summary(path, summary)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.errors or summary.unreadable:
        raise typer.Exit(1)


def _run_add(idx, paths, stop, *, quiet: bool, **opts):
    if quiet:
        return idx.add(paths, stop=stop, **opts)
    from clipsift.cli.output import progress_bar
    from clipsift.inputs.sources import count_items

    total = count_items(paths, recursive=opts.get("recursive", True))
    with progress_bar("[bold]indexing", "{task.fields[rate]:.1f} img/s",
                      "[red]{task.fields[errors]} errors") as bar:
        task = bar.add_task("index", total=total, rate=0.0, errors=0)

        def on_progress(p) -> None:
            rate = p.encoded / p.seconds if p.seconds > 0 else 0.0
            bar.update(task, completed=min(p.done, total), rate=rate, errors=p.errors)

        return idx.add(paths, stop=stop, progress=on_progress, **opts)


def _print_summary(path, s) -> None:
    from clipsift.cli.output import notice

    if s.notice:
        notice(s.notice)
    state = ("interrupted (run again to resume)" if s.interrupted else
             "incomplete" if s.incomplete else "done")
    notice(f"index {path}: {state} in {s.seconds:.1f} s: {s.added} added, {s.updated} "
           f"updated, {s.renamed} renamed, {s.removed} removed, {s.unchanged} unchanged, "
           f"{s.errors} errors")
    if s.unreadable:
        notice(f"  {s.unreadable} folder(s) or file(s) could not be read; their entries were "
               "kept as they were (fix the access and run again)")
    if s.errors or s.unreadable:
        notice(f"  list them with: clipsift errors {path}")
    if s.stale:
        notice(f"  {s.stale} items still wait to be embedded by the index's new model: run "
               "`clipsift index` on their folders too")


def search_cmd(
    index: IndexArg,
    query: Annotated[str | None, typer.Argument(
        help='Text query; combine with + and - and weights: \'"beach" - "people"\', '
        "'2:sunset + sky', 'image:photo.jpg', 'id:42'.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Query image (image→image; "
                                              "with --captions: image→text).")] = None,
    captions: Annotated[str | None, typer.Option(
        "--captions", help="Text file, one caption per line: rank them for --image.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="Number of results.")] = 10,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Only results with a score (cosine) at least this.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Search an index by text, image, or both; or caption an image from a list."""
    from clipsift.errors import UsageError
    from clipsift.index.index import Index
    from clipsift.index.query import read_captions

    idx = Index.open(index)
    try:
        if captions is not None:
            if image is None or query is not None:
                raise UsageError("--captions ranks captions for --image; give --image and no "
                                 "text query")
            hits = idx.search_captions(image, read_captions(captions), k, threshold)
            _print_captions(hits, json_out)
            return
        if query is None and image is None:
            raise UsageError("give a text query and/or --image")
        _print_hits(idx.search(query, image=image, k=k, threshold=threshold), json_out)
    finally:
        idx.close()


def _print_hits(hits, json_out: bool) -> None:
    import json

    for h in hits:
        if json_out:
            typer.echo(json.dumps({"id": h.id, **json_fields("path", h.path), "score": h.score},
                                  ensure_ascii=False))
        else:
            typer.echo(f"{h.score:.4f}  {printable(h.path)}  (id {h.id})")


def _print_captions(hits, json_out: bool) -> None:
    import json

    for h in hits:
        if json_out:
            typer.echo(json.dumps({"line": h.line, "text": h.text, "score": h.score},
                                  ensure_ascii=False))
        else:
            typer.echo(f"{h.score:.4f}  {h.text}  (line {h.line})")


def errors_cmd(index: IndexArg, json_out: JsonOpt = False) -> None:
    """List the files an index could not embed, and the folders and files it could not
    read (their entries were kept), with the reason."""
    import json

    from clipsift.index.index import Index

    with Index.open(index) as idx:
        for p in idx.problems():
            if json_out:
                typer.echo(json.dumps({"id": None, **json_fields("path", p.key), "kind": p.kind,
                                       "error": p.error}, ensure_ascii=False))
            else:
                typer.echo(f"{printable(p.key)}: {p.error} ({p.kind} not read; entries kept)")
        for row in idx.errors():
            if json_out:
                typer.echo(json.dumps({"id": row.id, **json_fields("path", row.key),
                                       "kind": "item", "error": row.error}, ensure_ascii=False))
            else:
                typer.echo(f"{printable(row.key)}: {row.error}")


def export_cmd(
    index: IndexArg,
    output: Annotated[str, typer.Argument(help="Parquet file to write.")],
) -> None:
    """Write an index's items and embeddings to Parquet (for pandas, duckdb, Spark)."""
    from clipsift.cli.output import notice
    from clipsift.index.export import export_parquet
    from clipsift.index.index import Index

    with Index.open(index) as idx:
        s = export_parquet(idx, output)
    notice(f"wrote {s.rows} rows ({s.model}, dim {s.dim}) to {s.path}")
    if s.missing:
        notice(f"  {s.missing} items have no vector and are not in it (`clipsift errors "
               f"{index}`)")


def register(app: typer.Typer) -> None:
    app.command("index")(index_cmd)
    app.command("search")(search_cmd)
    app.command("errors")(errors_cmd)
    app.command("export")(export_cmd)
