"""`clipsift evaluate`: zero-shot accuracy on a labelled dataset, prompt sets side by side."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import (
    BatchOpt,
    DeviceOpt,
    FastDecodeOpt,
    ModelOpt,
    WorkersOpt,
    load_model,
)
from clipsift.inputs.keys import printable

_PER_CLASS_ROWS = 30

DatasetArg = Annotated[str, typer.Argument(
    help="Folder with one sub-folder per class, a Roboflow CLIP export, a .tar, or a "
    "CSV/Parquet manifest (path,label).")]
PromptsOpt = Annotated[list[str] | None, typer.Option(
    "--prompts", "-p", help="A template with {} or {c} ('a photo of a {}.'), a prompt file "
    "(templates, e.g. CLIP_benchmark's, or one prompt per class), or a named set (imagenet80, "
    "simple); literal braces as {{ }}. Repeat to compare sets. Default: '{}', 'a photo of a {}.', "
    "imagenet80.")]
SearchOpt = Annotated[bool, typer.Option(
    "--search-prompts", help="Search a library of templates and ensembles on part of the data; "
    "report the winner on the held-out rest.")]
FewShotOpt = Annotated[int | None, typer.Option(
    "--few-shot", min=1, help="Also fit a logistic-regression probe on K images per class and "
    "compare it with zero-shot on the same held-out images.")]
ReportOpt = Annotated[str | None, typer.Option(
    "--report", help="Write a self-contained HTML report to this file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ClassNamesOpt = Annotated[str | None, typer.Option(
    "--class-names", help="Mapping file overriding class names: JSON {folder: name} or CSV "
    "lines folder,name.")]
SplitOpt = Annotated[str | None, typer.Option(
    "--split", help="Roboflow split folder to use (default: test).")]
PerClassOpt = Annotated[int | None, typer.Option(
    "--per-class", min=1, help="Use at most N images per class.")]
HoldoutOpt = Annotated[float, typer.Option(
    "--holdout", min=0.05, max=0.95, help="Share of each class held out for --search-prompts "
    "/ --few-shot.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the held-out split.")]
IndexOpt = Annotated[str | None, typer.Option(
    "--index", help="Reuse vectors from this clipsift index (same model).")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache", help="Embedding cache file (default: <cache dir>/eval-embeddings.sqlite).")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Do not read or write the embedding cache.")]


def evaluate_cmd(
    dataset: DatasetArg,
    prompts: PromptsOpt = None,
    search_prompts: SearchOpt = False,
    few_shot: FewShotOpt = None,
    report: ReportOpt = None,
    json_out: JsonOpt = False,
    class_names: ClassNamesOpt = None,
    split: SplitOpt = None,
    per_class: PerClassOpt = None,
    holdout: HoldoutOpt = 0.5,
    seed: SeedOpt = 0,
    index: IndexOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    fast_decode: FastDecodeOpt = False,
) -> None:
    """Zero-shot accuracy on labelled images: compare prompt wordings, find where it fails."""
    import json

    from clipsift.cli.common import fast_decode_notice
    from clipsift.evaluation.datasets import EmbeddingCache, default_cache_path, load_dataset
    from clipsift.evaluation.evaluate import EvalOptions, evaluate
    from clipsift.evaluation.prompts import prompt_sets_for

    ds = load_dataset(dataset, class_names=class_names, split=split, max_per_class=per_class)
    prompt_sets_for(ds, prompts)  # bad templates or prompt files fail before any embedding
    m = load_model(model, device)
    fast_decode_notice(fast_decode)
    store = None if no_cache else EmbeddingCache(cache or default_cache_path())
    try:
        emb = _embed(m, ds, store, index, batch_size, workers, fast_decode)
    finally:
        if store is not None:
            store.close()
    ev = evaluate(m, ds, emb, prompts,
                  EvalOptions(search=search_prompts, few_shot=few_shot, holdout=holdout, seed=seed))
    if report:
        from clipsift.evaluation.report import write_report

        write_report(ev, ds, report)
    if json_out:
        typer.echo(json.dumps(ev.to_dict(), ensure_ascii=False))
    else:
        _print_human(ev)
    _print_footer(ev, report)


def _embed(model, ds, store, index, batch_size, workers, fast_decode):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from clipsift.evaluation.datasets import embed_dataset

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("embedding images", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return embed_dataset(model, ds, cache=store, index=index, batch_size=batch_size,
                             workers=workers, progress=progress, fast_decode=fast_decode)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _print_human(ev) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console(highlight=False)
    out.print(f"[bold]{escape(printable(ev.dataset))}[/] ({ev.kind}): {len(ev.rows):,} images, "
              f"{len(ev.classes)} classes · model [bold]{escape(ev.model)}[/]")
    t = Table(title="Prompt sets (all images)", title_justify="left")
    for col in ("prompt set", "prompts/class", "top-1", "top-5", "mean recall"):
        t.add_column(col, justify="left" if col == "prompt set" else "right")
    for i, p in enumerate(ev.prompt_sets):
        best = i == ev.best_index
        m = p.metrics
        t.add_row(escape(p.name) + (" ★" if best else ""), str(p.per_class), _pct(m.top1),
                  _pct(m.top5), _pct(m.mean_recall), style="bold green" if best else None)
    out.print(t)
    if ev.heldout is not None:
        _print_heldout(out, ev.heldout)
    _print_classes(out, ev)


def _print_heldout(out, ho) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"Held-out comparison ({ho.size:,} images; choices made on "
              f"{ho.tune_size:,} others)", title_justify="left")
    for col in ("method", "prompts / model", "top-1", "mean recall"):
        t.add_column(col, justify="right" if col in ("top-1", "mean recall") else "left")
    for r in ho.rows:
        t.add_row(r.method, escape(r.name), _pct(r.metrics.top1), _pct(r.metrics.mean_recall))
    out.print(t)
    if ho.candidates:
        top = ", ".join(f"{escape(c.name)} {_pct(c.top1)}" for c in ho.candidates[:5])
        out.print(f"prompt search, best on the tuning part: {top}")


def _print_classes(out, ev) -> None:
    from rich.markup import escape
    from rich.table import Table

    m = ev.best.metrics
    per = sorted(range(len(m.per_class)), key=lambda i: m.per_class[i].recall)
    shown = per if len(per) <= _PER_CLASS_ROWS else per[:_PER_CLASS_ROWS]
    title = f"Per class, best prompt set '{escape(ev.best.name)}'"
    if len(shown) < len(per):
        title += f" ({len(shown)} lowest-recall classes of {len(per)})"
    t = Table(title=title, title_justify="left")
    for col in ("class", "images", "precision", "recall", "most often mistaken for"):
        t.add_column(col, justify="right" if col in ("images", "precision", "recall")
                     else "left")
    conf = m.confusion.copy()
    for i in range(len(conf)):
        conf[i, i] = 0
    for i in shown:
        c = m.per_class[i]
        j = int(conf[i].argmax())
        other = f"{escape(ev.classes[j])} ({conf[i, j]})" if conf[i, j] else "—"
        t.add_row(escape(c.name), str(c.support), _pct(c.precision), _pct(c.recall), other)
    out.print(t)


def _print_footer(ev, report: str | None) -> None:
    import sys

    from clipsift.cli.output import notice

    sys.stdout.flush()  # results first, then the summary on stderr

    for note in ev.notes:
        notice(f"note: {note}")
    if ev.failures:
        notice(f"{len(ev.failures)} unreadable image(s) left out:")
        for key, reason in ev.failures[:10]:
            notice(f"  {printable(key)}: {reason}")
        if len(ev.failures) > 10:
            notice(f"  ... and {len(ev.failures) - 10} more (see --json or --report)")
    e = ev.embedding
    notice(f"images encoded: {e['encoded']:,}, from cache: {e['from_cache']:,}, "
           f"from index: {e['from_index']:,}")
    if report:
        notice(f"report written to {printable(report)}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
