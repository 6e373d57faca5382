"""`clipsift filter`: keep the images about a theme, drop unsafe ones."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.collection import IndexOpt, SourcesArg, model_for, split_sources
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
    install_sigint,
    make_engine_for,
)
from clipsift.inputs.keys import json_fields, printable

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


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
    quiet: QuietOpt = False, json_out: JsonOpt = False, fast_decode: FastDecodeOpt = False,
) -> None:
    """Keep the images about a theme: score every image against prompts, decide by a rule,
    write a Parquet manifest of every image, optionally copy/symlink/move the kept ones.

    Resumable: a killed or Ctrl-C'd run continues when the same command is run again.
    """
    from clipsift.errors import UsageError

    if not output:
        raise UsageError("--output is required: a folder, or a .parquet manifest path")
    inputs, index_path = split_sources(sources, index)
    rule = _build_rule(keep, drop, preset, threshold, margin, top, top_fraction, invert)
    place = _placement(copy, symlink, move)
    loaded = model_for(model, device, index_path)
    with make_engine_for(engine, workers, ray_address, ray_cpus, encoders,
                         fast_decode and not index_path) as eng:
        if calibrate is not None:
            rule = _calibrate(loaded, rule, calibrate, eng, batch_size, json_out)
        summary = _run(loaded, rule, output, inputs, index_path, place, eng, batch_size,
                       fresh, quiet)
    _report(summary, json_out)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.place_errors or summary.unreadable:
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

        with Index.open(index) as idx:
            return idx.count()
    from clipsift.inputs.sources import count_items

    return count_items(inputs)


def _report(s, json_out: bool) -> None:
    import json

    from clipsift.cli.output import notice

    if json_out:
        typer.echo(json.dumps({
            **json_fields("manifest", str(s.manifest) if s.manifest else None), "items": s.items,
            "kept": s.kept, "dropped": s.dropped, "errors": s.errors, "placed": s.placed,
            "place_errors": len(s.place_errors), "scored_now": s.scored_now,
            "scored_before": s.scored_before, "seconds": round(s.seconds, 3),
            "interrupted": s.interrupted, "rule": s.rule.to_json(),
            "unreadable": {printable(k): v for k, v in s.unreadable.items()}}))
    if s.interrupted:
        notice(f"interrupted after {s.scored_before + s.scored_now} scored images; run the "
               "same command again to resume")
        return
    notice(f"filter: {s.items} images: {s.kept} kept, {s.dropped} dropped, {s.errors} "
           f"unreadable ({s.scored_now} scored now, {s.scored_before} earlier) in "
           f"{s.seconds:.1f} s; manifest {s.manifest}")
    for folder, reason in list(s.unreadable.items())[:20]:
        notice(f"  {printable(folder)}: {reason} (its images are not in the manifest; fix "
               "the access and run again to add them)")
    if s.placed or s.place_errors:
        notice(f"  placed {s.placed} files; {len(s.place_errors)} failed")
    for key, reason in list(s.place_errors.items())[:20]:
        notice(f"  {printable(key)}: {reason}")


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_cmd)
