"""The resumable work folder of `clipsift filter`: committed Parquet part files of scores,
and a SQLite journal holding the run's fingerprint and the placements.

A run is identified by its fingerprint: the model's identity (name, dim and
`ClipModel.fingerprint`: weights + preprocessing + tokenizer + precision class), the prompt
columns and the source. A work folder written by another fingerprint is never resumed (its
scores came from other vectors or prompts): the run stops with an error naming what
differs, and `fresh=True` (`--fresh`) discards it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsift.errors import UsageError
from clipsift.inputs.keys import key_bytes, key_from_bytes
from clipsift.sift.rules import score_matrix

if TYPE_CHECKING:
    import pyarrow as pa

    from clipsift.models.base import ClipModel
    from clipsift.sift.rules import Rule

# One scored item: key, size, mtime, width, height, error, unit vector (None on error).
Row = tuple[str, int | None, float | None, int | None, int | None, str | None,
            np.ndarray | None]
_FIELDS = ("model", "dim", "fingerprint", "prompts", "source")


def run_fingerprint(model: ClipModel, rule: Rule, describe: dict) -> dict:
    """What a work folder's scores depend on (compared before resuming)."""
    return {"model": model.name, "dim": model.dim, "fingerprint": model.fingerprint.digest,
            "prompts": [name for name, _ in rule.columns()], "source": describe}


def part_table(rows: list[Row], texts: np.ndarray) -> pa.Table:
    """Scores of a batch of rows against the prompt vectors [P, D], as one part's table."""
    import pyarrow as pa

    n, p = len(rows), texts.shape[0]
    scores = np.zeros((n, p), np.float32)
    ok = [i for i, r in enumerate(rows) if r[6] is not None]
    if ok:
        scores[ok] = score_matrix(np.stack([rows[i][6] for i in ok]), texts)
    offsets = pa.array(np.arange(0, n * p + 1, p, dtype=np.int32))
    cols = {
        "key": pa.array([key_bytes(r[0]) for r in rows], pa.binary()),
        "size": pa.array([r[1] for r in rows], pa.int64()),
        "mtime": pa.array([r[2] for r in rows], pa.float64()),
        "width": pa.array([r[3] for r in rows], pa.int32()),
        "height": pa.array([r[4] for r in rows], pa.int32()),
        "error": pa.array([r[5] for r in rows], pa.string()),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel(), pa.float32())),
    }
    return pa.table(cols)


class WorkDir:
    """Committed part files plus the SQLite journal (fingerprint, placements)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        from clipsift.sift.placement import open_journal

        if fresh and path.exists():
            shutil.rmtree(path)
        self.path = path
        self.parts = path / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        self.db = open_journal(path / "journal.sqlite")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")

    def check(self, fingerprint: dict) -> None:
        """Record the run's fingerprint, or make sure it is the recorded one.

        Raises:
            UsageError: the folder holds a run with another model (fingerprint), prompts
                or source; names what differs and the two fixes.
        """
        row = self.db.execute("SELECT v FROM meta WHERE k = 'fingerprint'").fetchone()
        text = json.dumps(fingerprint, sort_keys=True)
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (text,))
            return
        if row[0] == text:
            return
        old = json.loads(row[0])
        what = [k for k in _FIELDS if old.get(k) != fingerprint[k]]
        if "fingerprint" in what:
            what[what.index("fingerprint")] = (
                f"model weights/preprocessing/precision (fingerprint "
                f"{str(old.get('fingerprint') or 'not recorded')[:12]} there, "
                f"{fingerprint['fingerprint'][:12]} now)")
        raise UsageError(
            f"{self.path} holds an earlier filter run with other {', '.join(what)}; "
            "rerun with --fresh to discard its scores, or choose another --output"
        )

    def _files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def keys(self) -> set[str]:
        import pyarrow.parquet as pq

        keys: set[str] = set()
        for f in self._files():
            keys.update(key_from_bytes(k)
                        for k in pq.read_table(f, columns=["key"])["key"].to_pylist())
        return keys

    def write_part(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        files = self._files()
        number = int(files[-1].stem.split("-")[1]) + 1 if files else 0
        final = self.parts / f"part-{number:06d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def read(self) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(f) for f in self._files()]
        if not tables:
            return part_table([], np.zeros((0, 1), np.float32)).slice(0, 0)
        return pa.concat_tables(tables)

