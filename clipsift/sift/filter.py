"""Bulk theme filter: score every image against keep/drop prompts (and presets), decide with
a rule users can reason about (`clipsift.sift.rules`), write a Parquet manifest of every
item, and optionally copy, symlink or move the kept files (`clipsift.sift.placement`).

    >>> rule = Rule(keep=(Prompt("a photo of a dog"),), threshold=0.25)
    >>> summary = run_filter(model, rule, "out/", inputs=["photos/"], place="copy")
    >>> summary.kept, summary.manifest
    (412, PosixPath('out/manifest.parquet'))

Sources are files, folders, globs, tar shards and file lists (embedded with an engine:
local processes or Ray), or a clipsift index, whose stored vectors are used as they are:
nothing is re-encoded.

Streaming and resumable: items are scored batch by batch, and each batch is committed as
one Parquet part file in a work folder (`OUT/.clipsift-filter/parts/`, written to a
temporary name and renamed, so a part is either complete or absent). A killed run, run
again with the same command, skips the items already in parts and goes on. Only when
every item is scored are decisions taken (top-N needs every score), the manifest
assembled (`OUT/manifest.parquet`) and files placed, each placement journaled in
`OUT/.clipsift-filter/journal.sqlite` so that it is done exactly once. The work folder is
kept: rerunning with another threshold re-decides from the stored scores in seconds.
Changing the prompts, the model (its fingerprint: weights, preprocessing, tokenizer,
precision class; not only its name) or the inputs needs `fresh=True` (or another output):
a work folder is never resumed with other vectors (`clipsift.sift.workdir`).

A folder that cannot be listed is not skipped silently: it is in the summary
(`unreadable`) and in the manifest as an "error" row, and the next run tries it again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsift.errors import UsageError
from clipsift.inputs.keys import key_from_bytes, parquet_columns
from clipsift.models.fingerprint import parquet_metadata
from clipsift.sift.filter_source import FilterSource, make_source
from clipsift.sift.rules import Calibration, Rule, calibrate, decide, prompt_vectors, score_matrix
from clipsift.sift.workdir import Row, WorkDir, part_table, run_fingerprint

if TYPE_CHECKING:
    import pyarrow as pa

    from clipsift.engines import Engine
    from clipsift.models.base import ClipModel

MANIFEST_NAME = "manifest.parquet"
WORK_NAME = ".clipsift-filter"


@dataclass(frozen=True)
class FilterProgress:
    """Passed to the progress callback: `phase` is "scoring" or "placing"; `total` is the
    number of files to place (None while scoring)."""

    phase: str
    done: int
    errors: int
    seconds: float
    total: int | None = None


@dataclass(frozen=True)
class FilterSummary:
    """What `run_filter` did.

    Attributes:
        manifest: the Parquet manifest (None when the run was interrupted before it).
        items: items in the manifest (kept + dropped + errors).
        kept, dropped, errors: decisions ("error": the item could not be read).
        scored_now: items scored by this run; scored_before: by earlier, interrupted runs.
        placed: files placed by this run; place_errors: key -> reason of failed placements.
        rule: the rule applied (with defaults filled in).
        interrupted: the stop event ended the run early; run again to resume.
        unreadable: folder -> reason, for folders that could not be listed (their images
            are unknown; they are "error" rows of the manifest, counted in `errors`).
    """

    manifest: Path | None
    items: int
    kept: int
    dropped: int
    errors: int
    scored_now: int
    scored_before: int
    placed: int
    place_errors: dict[str, str]
    seconds: float
    rule: Rule
    interrupted: bool = False
    unreadable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterOutput:
    """Where a run writes: the manifest, its work folder, and the folder for kept files."""

    manifest: Path
    work: Path
    folder: Path | None

    @classmethod
    def at(cls, output: str | os.PathLike) -> FilterOutput:
        """A `.parquet` path is the manifest itself; anything else is an output folder."""
        p = Path(output).expanduser()
        if p.suffix.lower() == ".parquet":
            return cls(p, p.with_name(p.name + ".work"), None)
        return cls(p / MANIFEST_NAME, p / WORK_NAME, p)


def run_filter(
    model: ClipModel, rule: Rule, output: str | os.PathLike, *,
    inputs: Sequence[str | os.PathLike] = (), index: str | os.PathLike | None = None,
    place: str | None = None, engine: Engine | None = None, batch_size: int = 64,
    fresh: bool = False, stop: threading.Event | None = None,
    progress: Callable[[FilterProgress], None] | None = None,
) -> FilterSummary:
    """Filter a collection with `rule`; write the manifest; place kept files.

    Args:
        model: the model (for an index: the index's model; checked).
        rule: the decision rule (`clipsift.sift.rules.Rule`).
        output: an output folder (manifest at OUT/manifest.parquet, kept files under it)
            or a `.parquet` manifest path (no placement).
        inputs: files, folders, globs, tar shards, file lists; or give `index` instead.
        index: a clipsift index whose stored vectors are scored (no re-encoding).
        place: None, "copy", "symlink" or "move" (see `clipsift.sift.placement`).
        engine: how to embed inputs (default: local processes); unused for an index.
        batch_size: items per batch, and per committed part file.
        fresh: discard the scores and placement journal of an earlier run at `output`.
        stop: set it to end the run after the current batch (resume by running again).
        progress: called after every committed batch and placed file.

    Raises:
        UsageError: bad rule, inputs, output, or a work folder holding another run.
        ModelMismatch: `model` is not the index's model.
    """
    t0 = time.perf_counter()
    rule = rule.resolved()
    out = FilterOutput.at(output)
    if place is not None and out.folder is None:
        raise UsageError(f"--{place} needs an output folder, not a manifest path ({output})")
    stop = stop or threading.Event()
    source = make_source(model, inputs, index, engine, batch_size)
    work: WorkDir | None = None
    try:
        if place is not None and out.folder is not None:
            from clipsift.sift.placement import check_output

            check_output(out.folder, source.roots)
        work = WorkDir(out.work, fresh)
        work.check(run_fingerprint(model, rule, source.describe))
        done_keys = work.keys()
        scored_now = _score(work, source, done_keys, model, rule, stop, progress, t0)
        unreadable = {e.path: e.message for e in source.unreadable}
        base = dict(scored_now=scored_now, scored_before=len(done_keys), rule=rule,
                    unreadable=unreadable)
        if stop.is_set():
            return FilterSummary(None, 0, 0, 0, 0, placed=0, place_errors={},
                                 seconds=time.perf_counter() - t0, interrupted=True, **base)
        counts, placed, errors = _finish(work, out, rule, model, place, source.roots,
                                         progress, t0, unreadable)
    finally:
        source.close()
        if work is not None:
            work.db.close()
    return FilterSummary(out.manifest, *counts, placed=placed, place_errors=errors,
                         seconds=time.perf_counter() - t0, **base)


def _score(work: WorkDir, source: FilterSource, done_keys: set[str], model: ClipModel,
           rule: Rule, stop: threading.Event,
           progress: Callable[[FilterProgress], None] | None, t0: float) -> int:
    """Score every item not in a committed part; returns how many were scored."""
    texts = prompt_vectors(model, rule)  # [P, D]
    scored = errors = 0
    for rows in source.batches(done_keys, stop):
        if not rows:
            continue
        work.write_part(part_table(rows, texts))
        scored += len(rows)
        errors += sum(1 for r in rows if r[5] is not None)
        if progress is not None:
            progress(FilterProgress("scoring", len(done_keys) + scored, errors,
                                    time.perf_counter() - t0))
        if stop.is_set():
            break
    return scored


# ---- decisions, manifest, placement --------------------------------------------------------
def _finish(work: WorkDir, out: FilterOutput, rule: Rule, model: ClipModel,
            place: str | None, roots: list[str],
            progress: Callable[[FilterProgress], None] | None,
            t0: float, unreadable: dict[str, str],
            ) -> tuple[tuple[int, int, int, int], int, dict[str, str]]:
    import pyarrow as pa

    p = len(rule.columns())
    missing: list[Row] = [(k, None, None, None, None, why, None) for k, why in unreadable.items()]
    table = pa.concat_tables([work.read(), part_table(missing, np.zeros((p, 1), np.float32))])
    n = table.num_rows
    keys = [key_from_bytes(k) for k in table["key"].to_pylist()]
    ok = np.array([e is None for e in table["error"].to_pylist()], dtype=bool)
    flat = table["scores"].combine_chunks().flatten() if n else []
    scores = np.asarray(flat, np.float32).reshape(n, p)
    dec = decide(rule, scores, ok)
    placed, errors, targets = 0, {}, {}
    if place is not None and out.folder is not None:
        from clipsift.sift.placement import Placer, relative_name

        placer = Placer(work.db, out.folder, place)
        placer.plan((keys[i], relative_name(keys[i], roots)) for i in np.flatnonzero(dec.keep))
        done, total = [0], placer.pending()

        def on_file() -> None:
            done[0] += 1
            if progress is not None:
                progress(FilterProgress("placing", done[0], 0, time.perf_counter() - t0, total))

        result = placer.run(on_file)
        placed, errors, targets = result.placed, result.errors, placer.targets()
    manifest = _manifest(table, keys, scores, ok, dec, rule, model, targets)
    _write_manifest(manifest, out.manifest)
    kept = int(dec.keep.sum())
    return (n, kept, int(ok.sum()) - kept, int((~ok).sum())), placed, errors


def _manifest(table: pa.Table, keys: list[str], scores: np.ndarray, ok: np.ndarray, dec,
              rule: Rule, model: ClipModel, targets: dict) -> pa.Table:
    import pyarrow as pa

    decision = np.where(~ok, "error", np.where(dec.keep, "keep", "drop"))
    cols: dict[str, pa.Array] = parquet_columns("path", keys)
    for name in ("size", "mtime", "width", "height", "error"):
        cols[name] = table[name]
    cols["decision"] = pa.array(decision.tolist(), pa.string())
    mask = ~ok

    def floats(values: np.ndarray) -> pa.Array:
        return pa.array(np.asarray(values, np.float32), pa.float32(), mask=mask)

    if rule.keep:
        cols["keep_score"] = floats(dec.best_keep)
    if rule.drop:
        cols["drop_score"] = floats(dec.best_drop)
    if rule.keep and rule.drop:
        cols["margin"] = floats(dec.best_keep - dec.best_drop)
    for name, values in dec.preset_scores.items():
        cols[f"{name}_score"] = floats(values)
    for i, (name, _) in enumerate(rule.columns()):
        cols[name] = floats(scores[:, i])
    if targets:
        got = [targets.get(k) for k in keys]
        cols.update(parquet_columns("output_path", [g[0] if g and g[1] == "done" else None
                                                    for g in got]))
        cols["place_error"] = pa.array([g[2] if g else None for g in got], pa.string())
    meta = {**parquet_metadata(model.name, model.dim, model.fingerprint.digest),
            "clipsift.rule": json.dumps(rule.to_json()),
            "clipsift.prompt_columns": json.dumps([c for c, _ in rule.columns()])}
    return pa.table(cols).replace_schema_metadata(meta)


def _write_manifest(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# ---- calibration ---------------------------------------------------------------------------
def calibrate_rule(model: ClipModel, rule: Rule, examples: str | os.PathLike, *,
                   engine: Engine | None = None, batch_size: int = 64) -> Calibration:
    """Pick the rule's threshold (or margin) from labelled example images.

    Args:
        model: the model the filter will use.
        rule: keep prompts (optionally drop prompts), or one preset.
        examples: a folder with `positive/` (should be kept) and `negative/` (should be
            dropped) sub-folders of images.

    Returns:
        A `Calibration` (value, in-sample and cross-validated precision/recall);
        `clipsift.sift.rules.apply_calibration` puts it into the rule.

    Raises:
        UsageError: a sub-folder is missing, or holds no readable image.
    """
    from clipsift.engines.local import LocalEngine
    from clipsift.inputs.sources import iter_items

    base = Path(examples).expanduser()
    eng = engine if engine is not None else LocalEngine(workers=0)
    texts = prompt_vectors(model, rule)
    sets = []
    for label in ("positive", "negative"):
        folder = base / label
        if not folder.is_dir():
            raise UsageError(f"--calibrate expects {folder} (a folder of {label} example "
                             "images) next to its sibling positive/ or negative/")
        vecs = [r.vector for batch in eng.embed(model, iter_items([str(folder)]),
                                                batch_size=batch_size)
                for r in batch if r.vector is not None]
        dim = texts.shape[1]
        sets.append(score_matrix(np.stack(vecs) if vecs else np.zeros((0, dim)), texts))
    return calibrate(rule, sets[0], sets[1])
