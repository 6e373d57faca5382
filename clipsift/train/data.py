"""Image–caption pairs for training: sources, held-out split, datasets and loaders.

Sources (see `load_pairs`):
    - a folder of images, each with a same-named `.txt` file (one caption per line);
    - a CSV or Parquet manifest with an image column (a path relative to the manifest, or
      the encoded image bytes in Parquet), a caption column and an optional group column;
      rows naming the same image add captions to it;
    - tar shards in the webdataset layout (`key.jpg` + `key.txt` side by side).

Every random choice of a training sample (caption, crop, colours) comes from a generator
seeded by (seed, epoch, index), so the data a step sees does not depend on worker
processes or on whether the run was resumed. A bad image yields a `BadSample` and is
skipped and counted; it never stops training.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from clipsift.errors import TrainingError
from clipsift.train.augment import EvalTransform, TrainTransform

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "heic"})


@dataclass(frozen=True)
class PairItem:
    """One image and its captions. The image is a file path, inline bytes, or a tar member.

    Attributes:
        key: stable identity (path, tar key, or hash of inline bytes).
        captions: one or more captions; training picks one per epoch.
        group: items sharing a group land on the same side of the held-out split.
        path: image file (or tar shard) path.
        data: encoded image bytes (Parquet manifests).
        offset / size: byte range of the image inside the tar shard `path`.
    """

    key: str
    captions: tuple[str, ...]
    group: str
    path: str | None = None
    data: bytes | None = None
    offset: int = -1
    size: int = -1

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class PairSet:
    """Pairs read from one source; `skipped` counts entries without image or caption."""

    items: list[PairItem]
    kind: str
    source: str
    skipped: int = 0


# ---- sources -----------------------------------------------------------------------------
def load_pairs(
    spec: str, image_column: str = "image", caption_column: str = "caption",
    group_column: str = "group",
) -> PairSet:
    """Read image–caption pairs from a folder, a CSV/Parquet manifest or tar shards.

    Example:
        >>> pairs = load_pairs("photos/")   # photos/a.jpg + photos/a.txt, ...
        >>> len(pairs.items), pairs.kind
        (120, 'folder')
    """
    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".csv", ".tsv", ".parquet", ".pq"):
        pairs = _from_manifest(path, image_column, caption_column, group_column)
    elif path.is_dir() and _has_captioned_images(path):
        pairs = _from_folder(path)
    else:
        shards = _expand_shards(spec)
        if not shards:
            raise TrainingError(
                f"no training pairs at {spec!r}: expected a folder of images with same-named "
                ".txt captions, a .csv/.parquet manifest, or .tar shards (file, folder, glob "
                "or {000..009} pattern)"
            )
        pairs = _from_shards(shards, spec)
    if not pairs.items:
        raise TrainingError(f"{spec}: no usable image–caption pairs ({pairs.skipped} skipped)")
    return pairs


def _has_captioned_images(folder: Path) -> bool:
    return next(folder.rglob("*.txt"), None) is not None


def _split_captions(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _from_folder(folder: Path) -> PairSet:
    items, skipped = [], 0
    for img in sorted(folder.rglob("*")):
        if not img.is_file() or img.suffix.lower().lstrip(".") not in IMAGE_EXTS:
            continue
        txt = img.with_suffix(".txt")
        caps = _split_captions(txt.read_text(encoding="utf-8", errors="replace")) \
            if txt.is_file() else ()
        if not caps:
            skipped += 1
            continue
        key = img.relative_to(folder).as_posix()
        items.append(PairItem(key=key, captions=caps, group=key, path=str(img)))
    return PairSet(items, "folder", str(folder), skipped)


def _manifest_rows(path: Path, columns: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """Return (available columns, {column: values}) for the wanted columns that exist."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        wanted = [c for c in columns if c in names]
        return names, pq.read_table(path, columns=wanted).to_pydict()
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delim)
        names = list(reader.fieldnames or [])
        rows = list(reader)
    return names, {c: [r.get(c) for r in rows] for c in columns if c in names}


def _from_manifest(path: Path, image_col: str, caption_col: str, group_col: str) -> PairSet:
    names, cols = _manifest_rows(path, [image_col, caption_col, group_col])
    for col in (image_col, caption_col):
        if col not in names:
            raise TrainingError(
                f"{path}: no column {col!r}; columns are {', '.join(names) or '(none)'}"
            )
    groups = cols.get(group_col)
    merged: dict[str, dict[str, Any]] = {}
    skipped = 0
    for row, (image, caption) in enumerate(zip(cols[image_col], cols[caption_col], strict=True)):
        ref = _image_ref(image, path.parent)
        caps = _caption_list(caption)
        if ref is None or not caps:
            skipped += 1
            continue
        key, kwargs = ref
        entry = merged.setdefault(key, {"captions": [], "kwargs": kwargs,
                                        "group": str(groups[row]) if groups else key})
        entry["captions"].extend(c for c in caps if c not in entry["captions"])
    items = [PairItem(key=k, captions=tuple(e["captions"]), group=e["group"], **e["kwargs"])
             for k, e in merged.items()]
    return PairSet(items, "manifest", str(path), skipped)


def _image_ref(value: Any, root: Path) -> tuple[str, dict[str, Any]] | None:
    if isinstance(value, dict):  # Hugging Face datasets Image struct
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        return "sha1:" + hashlib.sha1(data).hexdigest(), {"data": data}
    if isinstance(value, str) and value.strip():
        p = Path(value.strip())
        p = p if p.is_absolute() else root / p
        return str(p), {"path": str(p)}
    return None


def _caption_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    if value is None:
        return []
    text = str(value).strip()
    return [text] if text else []


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    out = []
    for n in range(lo, hi + 1):
        out.extend(_expand_braces(pattern[: m.start()] + f"{n:0{width}d}" + pattern[m.end():]))
    return out


def _expand_shards(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar"))
    if path.is_file():
        return [spec]
    found: list[str] = []
    for pat in _expand_braces(spec):
        found.extend(sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else
                     ([pat] if Path(pat).is_file() else []))
    return found


def _shard_members(shard: str) -> dict[str, dict[str, Any]]:
    """Group the members of one uncompressed tar by webdataset key."""
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                entry = samples.setdefault(key, {})
                ext = ext.lower()
                if ext in IMAGE_EXTS:
                    entry["image"] = (m.offset_data, m.size)
                elif ext in ("txt", "json"):
                    raw = tf.extractfile(m)
                    entry[ext] = raw.read().decode("utf-8", "replace") if raw else ""
    except (tarfile.TarError, OSError) as ex:
        raise TrainingError(f"{shard}: not a readable uncompressed tar shard ({ex})") from ex
    return samples


def _json_captions(text: str) -> tuple[str, ...]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        return ()
    value = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
    return tuple(_caption_list(value))


def _from_shards(shards: Sequence[str], spec: str) -> PairSet:
    items, skipped = [], 0
    for shard in shards:
        for key, entry in _shard_members(shard).items():
            caps = _split_captions(entry["txt"]) if "txt" in entry else \
                _json_captions(entry.get("json", "{}"))
            if "image" not in entry or not caps:
                skipped += 1
                continue
            offset, size = entry["image"]
            full = f"{Path(shard).name}/{key}"
            items.append(PairItem(key=full, captions=caps, group=full, path=shard,
                                  offset=offset, size=size))
    return PairSet(items, "shards", spec, skipped)


# ---- held-out split ----------------------------------------------------------------------
def _group_score(group: str) -> float:
    return int(hashlib.sha1(group.encode("utf-8")).hexdigest()[:13], 16) / 16**13


def split_pairs(
    items: Sequence[PairItem], val_fraction: float
) -> tuple[list[PairItem], list[PairItem]]:
    """Deterministic split by group hash: (train, held-out). Seeds do not move it.

    A group goes to held-out when hash(group) < val_fraction, so the split is stable when
    data is added. With few groups, at least one group is held out (if there are two).
    """
    if val_fraction <= 0:
        return list(items), []
    scores = {g: _group_score(g) for g in {it.group for it in items}}
    held = {g for g, s in scores.items() if s < val_fraction}
    if not held and len(scores) >= 2:
        held = {min(scores, key=scores.__getitem__)}
    if len(held) == len(scores):
        raise TrainingError(
            f"val_fraction={val_fraction} leaves no training data ({len(scores)} groups)"
        )
    train = [it for it in items if it.group not in held]
    val = sorted((it for it in items if it.group in held), key=lambda it: _group_score(it.key))
    return train, val


def fingerprint(items: Sequence[PairItem]) -> str:
    """Short hash of the item keys and captions, to notice data changes on resume."""
    h = hashlib.sha1()
    for it in items:
        h.update(it.key.encode())
        h.update("\x1f".join(it.captions).encode())
    return h.hexdigest()[:16]


# ---- decoding and transforms ---------------------------------------------------------------
def decode_image(item: PairItem, size_hint: int | None = None) -> Image.Image:
    """Open an item's image safely (`clipsift.inputs.images`); transparent images stay RGBA.

    Keeping the alpha channel lets augmentation put random backgrounds under clip art.
    Raises `ImageError` (or any decoder error) for a bad image.
    """
    from clipsift.inputs.images import MAX_PIXELS, open_image

    raw = item.read_bytes()
    with Image.open(io.BytesIO(raw)) as probe:
        alpha = probe.mode in ("RGBA", "LA", "PA") or "transparency" in probe.info
        if not alpha or probe.width * probe.height > MAX_PIXELS:
            return open_image(raw, size_hint, name=item.key)
        probe.seek(0)
        return ImageOps.exif_transpose(probe).convert("RGBA")


# ---- datasets, sampler, loaders ------------------------------------------------------------
@dataclass
class PairBatch:
    """A collated batch. images [N, 3, H, W], tokens [N, context]; `bad` lists skipped images."""

    images: torch.Tensor
    tokens: torch.Tensor
    bad: list[str]
    indices: list[int]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random choices: a pure function of (seed, epoch, index)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()[:8],
                          "little")


class PairDataset(Dataset):
    """Training pairs indexed by (index, epoch): picks a caption and augments the image."""

    def __init__(self, items: Sequence[PairItem], transform: TrainTransform,
                 tokenizer: Callable[[list[str]], torch.Tensor], seed: int) -> None:
        self.items = list(items)
        self.transform = transform
        self.tokenizer = tokenizer
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, torch.Tensor | None, Any]:
        index, epoch = key
        item = self.items[index]
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        caption = item.captions[int(rng.integers(len(item.captions)))]
        try:
            pixels = self.transform(decode_image(item, self.transform.pre.image_size), rng)
        except Exception as ex:  # any decode failure: skip this sample, never stop training
            return index, None, f"{item.key}: {type(ex).__name__}: {ex}"
        return index, pixels, self.tokenizer([caption])[0]


class EvalImages(Dataset):
    """Held-out images with the evaluation transform; yields (index, pixels | None, error)."""

    def __init__(self, items: Sequence[PairItem], transform: EvalTransform) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, Any]:
        item = self.items[index]
        try:
            return index, self.transform(decode_image(item, self.transform.pre.image_size)), None
        except Exception as ex:  # recorded and skipped
            return index, None, f"{item.key}: {type(ex).__name__}: {ex}"


def collate_pairs(samples: list[tuple[int, torch.Tensor | None, Any]]) -> PairBatch:
    """Stack the readable samples; (index, None, reason) entries go to `bad`."""
    good = [s for s in samples if s[1] is not None]
    bad = [str(s[2]) for s in samples if s[1] is None]
    images = torch.stack([s[1] for s in good]) if good else torch.zeros(0)
    has_tokens = bool(good) and isinstance(good[0][2], torch.Tensor)
    tokens = torch.stack([s[2] for s in good]) if has_tokens else torch.zeros(0, dtype=torch.long)
    return PairBatch(images, tokens, bad, [s[0] for s in good])


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the ragged tail is dropped); one batch when n < batch_size."""
    return max(1, n // batch_size)


class EpochBatchSampler(Sampler):
    """A seeded permutation per epoch, cut into batches of (index, epoch) keys.

    `start_batch` skips batches already trained on, so a resumed epoch continues exactly.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_batch = start_batch
        self.num_batches = batches_per_epoch(n, batch_size)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1) % 2**63)
        order = torch.randperm(self.n, generator=gen).tolist()
        bs = min(self.batch_size, self.n)
        for b in range(self.start_batch, self.num_batches):
            yield [(i, self.epoch) for i in order[b * bs:(b + 1) * bs]]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, workers: int, batch_sampler: Sampler | None = None,
                batch_size: int = 1) -> DataLoader:
    """A DataLoader with `workers` processes (single-threaded torch in each)."""
    kwargs: dict[str, Any] = {"batch_sampler": batch_sampler} if batch_sampler is not None \
        else {"batch_size": batch_size, "shuffle": False}
    return DataLoader(dataset, num_workers=workers, collate_fn=collate_pairs,
                      worker_init_fn=_worker_init if workers else None,
                      prefetch_factor=4 if workers else None, **kwargs)
