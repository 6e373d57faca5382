"""`clipsift filter`, `dedup` and `unique`: sift large collections."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import (
    BatchOpt,
    DeviceOpt,
    EncodersOpt,
    EngineOpt,
    JsonOpt,
    ModelOpt,
    RayAddressOpt,
    RayCpusOpt,
    WorkersOpt,
    install_sigint,
    make_engine_for,
    printable,
)

SourcesArg = Annotated[list[str] | None, typer.Argument(
    help="Image files, folders, globs, .tar shards, file lists, or one clipsift index (.db).")]
IndexOpt = Annotated[str | None, typer.Option(
    "--index", "-i", help="Use a clipsift index (file or name): its stored vectors are used, "
    "nothing is re-encoded.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _split_sources(sources: list[str] | None, index: str | None) -> tuple[list[str], str | None]:
    """A single `.db` source that is a file is taken as an index."""
    from pathlib import Path

    from clipsift.errors import UsageError

    sources = list(sources or [])
    if index is None and len(sources) == 1 and sources[0].endswith(".db") \
            and Path(sources[0]).is_file():
        return [], sources[0]
    if index is not None and sources:
        raise UsageError("give image sources or --index, not both")
    if index is None and not sources:
        raise UsageError("nothing to read: give files, folders, globs, tar shards, lists or "
                         "--index INDEX")
    return sources, index


def _model(name: str | None, device: str, index: str | None):
    """The named model; for an index without --model, the model the index records."""
    from clipsift.cli.common import load_model

    if index is not None and name is None:
        from clipsift.index.index import Index

        with Index(index, create=False) as idx:
            return load_model(idx.store.meta.model, device)
    return load_model(name, device)


def _progress_bar(total: int | None, quiet: bool):
    """A rich progress bar on stderr and its update callback (None, None when quiet)."""
    if quiet:
        return None, None
    from clipsift.cli.output import progress_bar

    bar = progress_bar("[bold]{task.fields[phase]}", "{task.fields[rate]:.1f} img/s",
                       "[red]{task.fields[errors]} errors")
    task = bar.add_task("filter", total=total, phase="scoring", rate=0.0, errors=0)

    def update(p) -> None:
        if p.phase == "placing":
            bar.update(task, phase="placing", completed=p.done, total=p.total, rate=0.0)
            return
        rate = p.done / p.seconds if p.seconds > 0 else 0.0
        bar.update(task, completed=p.done, rate=rate, errors=p.errors)

    return bar, update


def _build_rule(keep, drop, preset, threshold, margin, top, top_fraction, invert):
    from clipsift.sift.rules import Rule, parse_preset, parse_prompt

    return Rule(keep=tuple(parse_prompt(t) for t in keep or []),
                drop=tuple(parse_prompt(t) for t in drop or []),
                presets=tuple(parse_preset(p) for p in preset or []),
                threshold=threshold, margin=margin, top_n=top, top_fraction=top_fraction,
                invert=invert)


def _placement(copy: bool, symlink: bool, move: bool) -> str | None:
    from clipsift.errors import UsageError

    chosen = [name for name, on in (("copy", copy), ("symlink", symlink), ("move", move)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one of --copy, --symlink, --move (got {', '.join(chosen)})")
    return chosen[0] if chosen else None


def _calibrate(model, rule, examples: str, engine, batch_size: int, json_out: bool):
    import json

    from clipsift.cli.output import notice
    from clipsift.sift.filter import calibrate_rule
    from clipsift.sift.rules import apply_calibration

    cal = calibrate_rule(model, rule, examples, engine=engine, batch_size=batch_size)
    msg = (f"calibrated {cal.target} = {cal.value:.4f} on {cal.positives} positive and "
           f"{cal.negatives} negative examples: precision {cal.precision:.3f}, recall "
           f"{cal.recall:.3f} on the examples; cross-validated precision "
           f"{cal.cv_precision:.3f}, recall {cal.cv_recall:.3f} (expect about this)")
    if json_out:
        typer.echo(json.dumps({"calibration": cal.__dict__}))
    notice(msg)
    return apply_calibration(rule, cal)


def filter_cmd(
    sources: SourcesArg = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder (manifest.parquet "
                                        "+ kept files), or a .parquet manifest path.")] = "",
    keep: Annotated[list[str] | None, typer.Option(
        "--keep", help="Prompt of what to keep; 'prompt@0.27' gives it its own threshold.")] = None,
    drop: Annotated[list[str] | None, typer.Option(
        "--drop", help="Prompt of what to drop ('prompt@T': drop when it scores >= T).")] = None,
    preset: Annotated[list[str] | None, typer.Option(
        "--preset", help="Drop what a preset flags: nsfw, violence ('nsfw@0.02' sets its "
        "threshold). Zero-shot: calibrate it.")] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Keep when some keep prompt scores >= this cosine.")] = None,
    margin: Annotated[float | None, typer.Option(
        "--margin", help="Keep when best keep score - best drop score >= this (default 0 "
        "when --drop is given).")] = None,
    top: Annotated[int | None, typer.Option("--top", help="Keep the N best-scoring.")] = None,
    top_fraction: Annotated[float | None, typer.Option(
        "--top-fraction", help="Keep this fraction (0-1] of the best-scoring.")] = None,
    invert: Annotated[bool, typer.Option("--invert", help="Keep what the rule drops.")] = False,
    calibrate: Annotated[str | None, typer.Option(
        "--calibrate", help="Folder with positive/ and negative/ examples: pick the "
        "threshold from them and report expected precision/recall.")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy kept files into OUTPUT.")] = False,
    symlink: Annotated[bool, typer.Option("--symlink", help="Symlink kept files.")] = False,
    move: Annotated[bool, typer.Option("--move", help="Move kept files (sources are "
                                       "removed).")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard an earlier run's scores in "
                                        "OUTPUT instead of resuming it.")] = False,
    index: IndexOpt = None, model: ModelOpt = None, device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_cpus: RayCpusOpt = None, encoders: EncodersOpt = 1,
    quiet: QuietOpt = False, json_out: JsonOpt = False,
) -> None:
    """Keep the images about a theme: score every image against prompts, decide by a rule,
    write a Parquet manifest of every image, optionally copy/symlink/move the kept ones.

    Resumable: a killed or Ctrl-C'd run continues when the same command is run again.
    """
    from clipsift.errors import UsageError

    if not output:
        raise UsageError("--output is required: a folder, or a .parquet manifest path")
    inputs, index_path = _split_sources(sources, index)
    rule = _build_rule(keep, drop, preset, threshold, margin, top, top_fraction, invert)
    place = _placement(copy, symlink, move)
    loaded = _model(model, device, index_path)
    with make_engine_for(engine, workers, ray_address, ray_cpus, encoders) as eng:
        if calibrate is not None:
            rule = _calibrate(loaded, rule, calibrate, eng, batch_size, json_out)
        summary = _run(loaded, rule, output, inputs, index_path, place, eng, batch_size,
                       fresh, quiet)
    _report(summary, json_out)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.place_errors:
        raise typer.Exit(1)


def _run(model, rule, output, inputs, index, place, engine, batch_size, fresh, quiet):
    import signal
    import threading

    from clipsift.sift.filter import run_filter

    total = None
    if not quiet:
        total = _total(inputs, index)
    bar, update = _progress_bar(total, quiet)
    stop = threading.Event()
    previous = install_sigint(stop)
    try:
        if bar is not None:
            bar.start()
        return run_filter(model, rule, output, inputs=inputs, index=index, place=place,
                          engine=engine, batch_size=batch_size, fresh=fresh, stop=stop,
                          progress=update)
    finally:
        if bar is not None:
            bar.stop()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _total(inputs, index) -> int | None:
    if index is not None:
        from clipsift.index.index import Index

        with Index(index, create=False) as idx:
            return idx.store.count()
    from clipsift.inputs.sources import count_items

    return count_items(inputs)


def _report(s, json_out: bool) -> None:
    import json

    from clipsift.cli.output import notice

    if json_out:
        typer.echo(json.dumps({
            "manifest": str(s.manifest) if s.manifest else None, "items": s.items,
            "kept": s.kept, "dropped": s.dropped, "errors": s.errors, "placed": s.placed,
            "place_errors": len(s.place_errors), "scored_now": s.scored_now,
            "scored_before": s.scored_before, "seconds": round(s.seconds, 3),
            "interrupted": s.interrupted, "rule": s.rule.to_json()}))
    if s.interrupted:
        notice(f"interrupted after {s.scored_before + s.scored_now} scored images; run the "
               "same command again to resume")
        return
    notice(f"filter: {s.items} images: {s.kept} kept, {s.dropped} dropped, {s.errors} "
           f"unreadable ({s.scored_now} scored now, {s.scored_before} earlier) in "
           f"{s.seconds:.1f} s; manifest {s.manifest}")
    if s.placed or s.place_errors:
        notice(f"  placed {s.placed} files; {len(s.place_errors)} failed")
    for key, reason in list(s.place_errors.items())[:20]:
        notice(f"  {printable(key)}: {reason}")


def dedup_cmd(
    sources: SourcesArg = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", "-t", help="Cosine similarity from which images are duplicates.")] = 0.95,
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
    json_out: JsonOpt = False,
) -> None:
    """Group near-duplicate images (FAISS range search) and pick a keeper per group."""
    from clipsift.cli.output import notice
    from clipsift.sift.dedup import find_duplicates, write_groups_html, write_groups_parquet

    coll = _collection(sources, index, model, device, batch_size, engine,
                       (workers, ray_address, ray_cpus, encoders))
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


def _collection(sources, index, model, device, batch_size, engine, engine_opts):
    from clipsift.sift.dedup import collection_from_index, collection_from_inputs

    inputs, index_path = _split_sources(sources, index)
    if index_path is not None:
        return collection_from_index(index_path)
    loaded = _model(model, device, None)
    with make_engine_for(engine, *engine_opts) as eng:
        return collection_from_inputs(loaded, inputs, engine=eng, batch_size=batch_size)


def _print_groups(result, coll, json_out: bool, limit: int = 20) -> None:
    import json

    for g_id, group in enumerate(result.groups if json_out else result.groups[:limit]):
        if json_out:
            typer.echo(json.dumps({"group": g_id, "keeper": printable(coll.keys[group.keeper]),
                                   "members": [printable(coll.keys[m]) for m in group.members],
                                   "similarity": [round(s, 4) for s in group.similarity]}))
            continue
        typer.echo(f"group {g_id}: keep {printable(coll.keys[group.keeper])}")
        for m, s in zip(group.members[1:], group.similarity[1:], strict=True):
            typer.echo(f"    {s:.3f}  {printable(coll.keys[m])}")
    if not json_out and len(result.groups) > limit:
        typer.echo(f"... {len(result.groups) - limit} more groups in the Parquet file")


def unique_cmd(
    sources: SourcesArg = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours to average over.")] = 10,
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Rows to print.")] = 20,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write the full ranking as Parquet.")] = None,
    index: IndexOpt = None, model: ModelOpt = None, device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_cpus: RayCpusOpt = None, encoders: EncodersOpt = 1,
    json_out: JsonOpt = False,
) -> None:
    """Rank images by how unusual they are: mean distance to their k nearest neighbours."""
    import json

    from clipsift.sift.dedup import uniqueness, write_unique_parquet

    coll = _collection(sources, index, model, device, batch_size, engine,
                       (workers, ray_address, ray_cpus, encoders))
    result = uniqueness(coll, k)
    if output:
        write_unique_parquet(result, coll, output)
    for rank, (row, score, near, sim) in enumerate(zip(
            result.order[:top], result.score[:top], result.nearest[:top],
            result.nearest_similarity[:top], strict=True), start=1):
        path, nearest = printable(coll.keys[row]), printable(coll.keys[near])
        if json_out:
            typer.echo(json.dumps({"rank": rank, "path": path, "uniqueness": round(float(
                score), 5), "nearest": nearest, "nearest_similarity": round(float(sim), 5)}))
        else:
            typer.echo(f"{rank:4d}  {score:.4f}  {path}  (nearest {sim:.3f}: {nearest})")


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_cmd)
    app.command("dedup")(dedup_cmd)
    app.command("unique")(unique_cmd)
