"""Labelled image datasets for evaluation: class folders, Roboflow CLIP exports, manifests.

Layouts `load_dataset` understands:
    - a folder per class: ``root/<class>/**/*.jpg`` (files directly under root are ignored);
    - the Roboflow "OpenAI CLIP Classification" export: ``test/<class>/...`` plus
      ``test/_tokenization.txt`` with one prompt per class, in the alphabetical order of the
      class folders (give the export root or its ``test`` folder; ``--split`` picks another);
    - a tar shard holding ``.../<class>/<image>`` members (e.g. a CIFAR-10 test tarball);
    - a CSV or Parquet manifest with ``path`` and ``label`` columns (relative paths are
      resolved against the manifest's folder).

Class names shown to the model come from folder names (or manifest labels) with ``_`` and
``-`` turned into spaces ("golden_retriever" -> "golden retriever"); a mapping file (JSON
object or two-column CSV ``folder,name``) overrides them.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipsift.errors import UsageError
from clipsift.evaluation.cache import EmbeddingCache, cache_key, default_cache_path
from clipsift.evaluation.embedding import DatasetEmbeddings, embed_dataset
from clipsift.inputs.images import IMAGE_EXTENSIONS
from clipsift.inputs.keys import split_key
from clipsift.inputs.sources import Item, WalkError, iter_items, iter_tar

__all__ = ["Dataset", "DatasetEmbeddings", "EmbeddingCache", "Sample", "cache_key",
           "class_display_name", "default_cache_path", "embed_dataset", "load_class_names",
           "load_dataset", "read_tokenization"]  # the embedding side: evaluation.embedding

TOKENIZATION_FILE = "_tokenization.txt"
MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
ROBOFLOW_SPLITS = ("test", "valid", "train")
_PATH_COLUMNS = ("path", "filepath", "file", "filename", "image")
_LABEL_COLUMNS = ("label", "class", "category")


@dataclass(frozen=True)
class Sample:
    """One labelled image: the item to read and its class index into `Dataset.classes`."""

    item: Item
    label: int

    @property
    def key(self) -> str:
        return self.item.key


@dataclass
class Dataset:
    """A labelled dataset, classes in alphabetical order of their folder names / raw labels.

    Attributes:
        root: what was loaded (folder, tar or manifest path).
        kind: "folders", "roboflow", "tar" or "manifest".
        folders: raw class names (folder names or manifest labels), sorted.
        classes: display names used in prompts, aligned with `folders`.
        samples: the images with their labels, in a deterministic order.
        prompts: per-class prompts from a Roboflow `_tokenization.txt`, else None.
        notes: things the user should know that did not stop loading.
        unreadable: folders inside class folders that could not be listed (their images
            are not in `samples`; `embed_dataset` reports them as failures).
    """

    root: str
    kind: str
    folders: list[str]
    classes: list[str]
    samples: list[Sample]
    prompts: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    unreadable: list[WalkError] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """int64 [N] class index of every sample."""
        return np.fromiter((s.label for s in self.samples), np.int64, len(self.samples))

    def counts(self) -> list[int]:
        """Images per class, aligned with `classes`."""
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()


def class_display_name(raw: str) -> str:
    """A folder name as a class name for prompts: `_`/`-` become spaces, runs collapse."""
    return " ".join(raw.replace("_", " ").replace("-", " ").split()) or raw


def load_dataset(path: str | os.PathLike, *, class_names: str | os.PathLike | None = None,
                 split: str | None = None, max_per_class: int | None = None) -> Dataset:
    """Load a labelled dataset from a class-folder tree, Roboflow export, tar or manifest.

    Args:
        path: the dataset (see the module docstring for the layouts).
        class_names: a mapping file (JSON object or CSV `folder,name`) overriding names.
        split: Roboflow split folder to use (default: test, else valid, else train).
        max_per_class: keep at most this many images per class (the first in sorted order).
    Returns:
        A Dataset with at least two classes, each with at least one image.
    Raises:
        UsageError: missing path, a class without images, fewer than two classes, a
            tokenization file whose line count differs from the class count, a bad
            manifest or mapping file.

    Example:
        >>> ds = load_dataset("flowers/")      # flowers/daisy/*.jpg, flowers/dandelion/*.jpg
        >>> ds.classes, ds.counts()
        (['daisy', 'dandelion'], [40, 41])
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"dataset {str(p)!r} does not exist; give a folder with one "
                         "sub-folder per class, a Roboflow CLIP export, a tar, or a CSV/Parquet "
                         "manifest with path,label columns")
    if max_per_class is not None and max_per_class < 1:
        raise UsageError(f"max_per_class must be at least 1, got {max_per_class}")
    if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
        ds = _from_manifest(p)
    elif p.is_file() and p.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        ds = _from_tar(p)
    elif p.is_dir():
        ds = _from_folder(p, split)
    else:
        raise UsageError(f"cannot read {str(p)!r} as a dataset: expected a folder, a .tar, "
                         f"or a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    if class_names is not None:
        names = load_class_names(class_names, ds.folders)
        ds.classes = [names.get(f, c) for f, c in zip(ds.folders, ds.classes, strict=True)]
    if max_per_class is not None:
        _cap(ds, max_per_class)
    _check_classes(ds)
    return ds


# ---- layouts ------------------------------------------------------------------------------
def _split_folder(root: Path, split: str | None) -> Path:
    """The folder holding the class folders: a Roboflow split, or root itself."""
    if split is not None:
        sub = root / split
        if not sub.is_dir():
            found = [s for s in ROBOFLOW_SPLITS if (root / s).is_dir()]
            raise UsageError(f"no split folder {split!r} in {str(root)!r}; found: "
                             f"{', '.join(found) or 'none'}")
        return sub
    if (root / TOKENIZATION_FILE).is_file():
        return root
    for name in ROBOFLOW_SPLITS:
        if (root / name / TOKENIZATION_FILE).is_file():
            return root / name
    subdirs = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    if subdirs and subdirs <= set(ROBOFLOW_SPLITS):  # an export root: test/ train/ valid/
        return root / next(s for s in ROBOFLOW_SPLITS if s in subdirs)
    return root


def _from_folder(root: Path, split: str | None) -> Dataset:
    folder = _split_folder(root, split)
    subdirs = sorted(e.name for e in os.scandir(folder)
                     if e.is_dir() and not e.name.startswith("."))
    if not subdirs:
        raise UsageError(f"{str(folder)!r} has no class folders; expected "
                         f"{folder}/<class>/<image>.jpg, one folder per class")
    samples: list[Sample] = []
    empty: list[str] = []
    unreadable: list[WalkError] = []
    for label, name in enumerate(subdirs):
        class_folder = os.path.abspath(folder / name)
        items = list(iter_items([class_folder], on_error=unreadable.append))
        bad = next((e for e in unreadable if e.path == class_folder), None)
        if bad is not None:  # a whole class unseen: no evaluation can be right
            raise UsageError(f"class folder {class_folder!r} cannot be read ({bad.reason}); "
                             "fix its permissions or remove it")
        if not items:
            empty.append(name)
        samples.extend(Sample(it, label) for it in items)
    if empty:
        raise UsageError(f"class folder(s) without images in {str(folder)!r}: "
                         f"{', '.join(empty)}; add images or remove the folder(s)")
    ds = Dataset(str(folder), "folders", subdirs, [class_display_name(s) for s in subdirs],
                 samples, unreadable=unreadable)
    tok = folder / TOKENIZATION_FILE
    if tok.is_file():
        ds.kind = "roboflow"
        ds.prompts = read_tokenization(tok, subdirs)
    loose = [e.name for e in os.scandir(folder) if e.is_file()
             and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    if loose:
        ds.notes.append(f"{len(loose)} image(s) directly in {folder} have no class folder "
                        "and were ignored")
    return ds


def read_tokenization(path: str | os.PathLike, folders: Sequence[str]) -> list[str]:
    """Per-class prompts from a Roboflow `_tokenization.txt` (one line per class, sorted).

    Raises:
        UsageError: the number of non-empty lines differs from the number of classes.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as ex:
        raise UsageError(f"cannot read tokenization file {str(path)!r}: {ex}") from ex
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != len(folders):
        raise UsageError(
            f"tokenization file {str(path)!r} has {len(lines)} prompt line(s) but the dataset "
            f"has {len(folders)} class folder(s) ({', '.join(folders)}); it needs one line per "
            "class, in the alphabetical order of the class folders"
        )
    return lines


def _from_tar(path: Path) -> Dataset:
    """Members `.../<class>/<image>` of a tar: the class is the member's parent folder."""
    by_class: dict[str, list[Item]] = {}
    for item in iter_tar(str(path)):
        member = split_key(item.key)[1] or ""
        parts = member.split("/")
        if len(parts) < 2:
            raise UsageError(f"tar member {member!r} of {str(path)!r} is not inside a class "
                             "folder; expected members like <class>/<image>.jpg")
        by_class.setdefault(parts[-2], []).append(item)
    folders = sorted(by_class)
    samples = [Sample(it, label) for label, name in enumerate(folders)
               for it in sorted(by_class[name], key=lambda i: i.key)]
    return Dataset(str(path), "tar", folders, [class_display_name(f) for f in folders],
                   samples)


def _manifest_rows(path: Path) -> list[dict[str, str]]:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return [{k: "" if v is None else str(v) for k, v in row.items()}
                    for row in pq.read_table(path).to_pylist()]
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh, delimiter=delim))
    except Exception as ex:  # OSError, csv.Error, decoding errors, pyarrow's own errors
        raise UsageError(f"cannot read manifest {str(path)!r}: {ex}") from ex


def _pick_column(columns: Sequence[str], wanted: Sequence[str], path: Path, role: str) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for w in wanted:
        if w in lower:
            return lower[w]
    raise UsageError(f"manifest {str(path)!r} has no {role} column (looked for "
                     f"{', '.join(wanted)}); its columns are: {', '.join(columns) or 'none'}")


def _from_manifest(path: Path) -> Dataset:
    rows = _manifest_rows(path)
    if not rows:
        raise UsageError(f"manifest {str(path)!r} has no rows")
    cols = list(rows[0].keys())
    pcol = _pick_column(cols, _PATH_COLUMNS, path, "path")
    lcol = _pick_column(cols, _LABEL_COLUMNS, path, "label")
    base = path.parent.resolve()
    pairs: list[tuple[str, str]] = []
    for n, row in enumerate(rows, start=2):
        rel, label = (row.get(pcol) or "").strip(), (row.get(lcol) or "").strip()
        if not rel or not label:
            raise UsageError(f"manifest {str(path)!r} row {n}: empty {pcol!r} or {lcol!r}")
        pairs.append((str(base / os.path.expanduser(rel)), label))
    folders = sorted({lab for _, lab in pairs})
    index = {name: i for i, name in enumerate(folders)}
    samples = [Sample(_file_item(p), index[lab]) for p, lab in pairs]
    return Dataset(str(path), "manifest", folders, [class_display_name(f) for f in folders],
                   samples)


def _file_item(path: str) -> Item:
    """An item for a listed file; a missing file still becomes an item (its error counts)."""
    try:
        st = os.stat(path)
        return Item(key=path, path=path, size=st.st_size, mtime=st.st_mtime)
    except OSError:
        return Item(key=path, path=path)


# ---- names, caps, checks ---------------------------------------------------------------
def load_class_names(path: str | os.PathLike, folders: Sequence[str]) -> dict[str, str]:
    """Read a mapping file: a JSON object {folder: name} or CSV/TSV lines `folder,name`.

    Raises:
        UsageError: unreadable file, bad format, or keys that name no class folder.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as ex:
        raise UsageError(f"cannot read class-name mapping {str(p)!r}: {ex}") from ex
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as ex:
            raise UsageError(f"class-name mapping {str(p)!r} is not valid JSON: {ex}") from ex
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise UsageError(f"class-name mapping {str(p)!r} must be a JSON object of "
                             '{"folder": "class name"} strings')
    else:
        delim = "\t" if "\t" in text else ","
        mapping = {}
        for n, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), start=1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise UsageError(f"class-name mapping {str(p)!r} line {n}: expected "
                                 f"'folder{delim}name', got {delim.join(row)!r}")
            mapping[row[0].strip()] = row[1].strip()
    unknown = sorted(set(mapping) - set(folders))
    if unknown:
        raise UsageError(f"class-name mapping {str(p)!r} names unknown class folder(s): "
                         f"{', '.join(unknown)}; the classes are: {', '.join(folders)}")
    return {str(k): str(v) for k, v in mapping.items()}


def _cap(ds: Dataset, n: int) -> None:
    kept: list[Sample] = []
    seen = [0] * len(ds.folders)
    for s in ds.samples:
        if seen[s.label] < n:
            kept.append(s)
            seen[s.label] += 1
    ds.samples = kept


def _check_classes(ds: Dataset) -> None:
    if len(ds.folders) < 2:
        raise UsageError(f"dataset {ds.root!r} has {len(ds.folders)} class(es) "
                         f"({', '.join(ds.folders) or 'none'}); evaluation needs at least two")
    dupes = sorted({c for c in ds.classes if ds.classes.count(c) > 1})
    if dupes:
        raise UsageError(f"several class folders map to the same class name: {', '.join(dupes)}"
                         "; rename the folders or give a class-name mapping file")
