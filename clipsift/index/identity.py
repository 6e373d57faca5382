"""Which model an index's vectors come from, and whether another model may join them.

An index records the fingerprint of its model (`clipsift.models.fingerprint`): weights,
preprocessing, tokenizer and precision class. Rules:
    - reading (search, export) needs the same model (the precision class may differ: a
      query embedded at fp32 searches int8 vectors fine);
    - writing (add) needs the same fingerprint, precision class included;
    - another model is refused (`ModelMismatch`, naming both) unless the user asks to
      re-embed the index, which drops every vector and embeds all items again;
    - an index written before fingerprints (none recorded) accepts a model with its name
      and dimension, and records that model's fingerprint on its first add.

The decode mode is part of what made the vectors (`clipsift.inputs.images.decode_mode`:
"exact", or "fast" with --fast-decode, large JPEGs at reduced scale). An index records it
on its first add that writes vectors; then:
    - an add in the other mode is refused (`ModelMismatch` naming both), unless the index
      is re-embedded in that mode (`reembed`);
    - evaluation reads the index's vectors only when they were decoded as it decodes;
    - an index with vectors but no recorded mode was made before clipsift recorded it, when
      large JPEGs were decoded at reduced scale by default: it is "legacy". Adds are still
      accepted (the index stays "legacy" and every add says so, suggesting --reembed, which
      makes it exact); evaluation refuses its vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipsift.errors import ModelMismatch, UsageError
from clipsift.models.fingerprint import CLASS_PRECISION, Fingerprint

if TYPE_CHECKING:
    from clipsift.index.records import StoreMeta
    from clipsift.models.base import ClipModel


#: the decode mode of vectors made before clipsift recorded it (large JPEGs at reduced scale)
DECODE_LEGACY = "legacy"
_HOW = {"exact": "exactly (whole images)",
        "fast": "with --fast-decode (large JPEGs at reduced scale)",
        DECODE_LEGACY: "by an older clipsift that did not record how (large JPEGs were then "
                       "decoded at reduced scale)"}


@dataclass(frozen=True)
class IndexIdentity:
    """What made an index's vectors.

    Attributes:
        model: the model's name.
        dim: the vectors' dimension.
        fingerprint: the model's fingerprint (None: an index from before fingerprints).
        decode: "exact", "fast", "legacy" (vectors made before the mode was recorded), or
            None (no vectors yet: the first add records its mode).
        uuid: changes when the index is re-embedded.
    """

    model: str
    dim: int
    fingerprint: Fingerprint | None
    decode: str | None
    uuid: str


def decode_of(meta: StoreMeta, has_vectors: bool) -> str | None:
    """The decode mode of an index's vectors: the recorded one, "legacy" for vectors made
    before clipsift recorded it, None when there are no vectors (nothing to mix with)."""
    if meta.decode:
        return meta.decode
    return DECODE_LEGACY if has_vectors else None


def check_decode(path: Path, decode: str | None, mode: str, *, writing: bool) -> str | None:
    """May vectors decoded in `mode` be mixed with an index's, decoded in `decode`?

    Args:
        writing: an add (a "legacy" index accepts it, with the returned notice); else a
            reader that mixes the index's vectors with its own (evaluation).

    Returns:
        A notice for the user, or None.

    Raises:
        ModelMismatch: the modes differ (naming both, with the fixes).
    """
    if decode is None or decode == mode:
        return None
    if decode == DECODE_LEGACY and writing:
        return (f"index {path} holds vectors decoded {_HOW[decode]}; new vectors are decoded "
                f"{_HOW[mode]}. Run the add once with --reembed (`Index(..., reembed=True)`) "
                "to embed every item again and record the mode")
    fixes = [] if decode == DECODE_LEGACY else [
        f"use {'--fast-decode' if decode == 'fast' else 'no --fast-decode'} as when it was built"]
    fixes.append("re-embed the index in this mode (--reembed)" if writing else
                 "re-embed the index in this mode (`clipsift index ... --reembed`)")
    fixes.append("choose another index" if writing else "leave --index out")
    todo = ", ".join(fixes[:-1]) + f", or {fixes[-1]}"
    raise ModelMismatch(f"index {path} holds vectors decoded {_HOW[decode]}, not {_HOW[mode]}; "
                        f"mixing them would give approximate results. {todo[0].upper()}"
                        f"{todo[1:]}")


def recorded(meta: StoreMeta) -> Fingerprint | None:
    """The fingerprint an index records, None for an index from an older clipsift."""
    return Fingerprint.from_json(meta.fingerprint) if meta.fingerprint else None


def load_model(name: str, precision: str | None = None, device: str = "cpu") -> ClipModel:
    from clipsift.models import load

    return load(name, device=device, precision=precision or "fp32")


def load_recorded(meta: StoreMeta, precision: str | None = None,
                  device: str = "cpu") -> ClipModel:
    """Load the model an index records, at `precision`, else at the precision of its
    vectors (fp32 when that cannot run here, e.g. fp16 without a GPU: reads still work)."""
    fp = recorded(meta)
    name = fp.source if fp is not None else meta.model
    if precision is None and fp is not None:
        from clipsift.models import _device
        from clipsift.models.precision import check_precision

        precision = CLASS_PRECISION.get(fp.precision, "fp32")
        try:
            check_precision(precision, _device(device))
        except UsageError:
            precision = "fp32"
    return load_model(name, precision, device)


def check_readable(path: Path, meta: StoreMeta, model: ClipModel) -> None:
    """May `model` query (and read) this index?

    Raises:
        ModelMismatch: another model (or, for an older index, another name or dim).
    """
    fp = recorded(meta)
    if fp is None:
        if model.name != meta.model or model.dim != meta.dim:
            raise ModelMismatch(
                f"index {path} was built with model {meta.model!r} (dim {meta.dim}), not "
                f"{model.name!r} (dim {model.dim}); use --model {meta.model} (or leave "
                "--model out), re-embed the index with the new model (--reembed), or "
                "choose another index")
        return
    mine = model.fingerprint
    if not fp.same_model(mine):
        raise mismatch(path, fp, mine)


def check_writable(path: Path, meta: StoreMeta, model: ClipModel) -> None:
    """May `model` add vectors to this index (same fingerprint, precision class included)?

    Raises:
        ModelMismatch: another model, or the same model at another precision class.
    """
    check_readable(path, meta, model)
    fp = recorded(meta)
    if fp is not None and fp != model.fingerprint:
        raise mismatch(path, fp, model.fingerprint)


def mismatch(path: Path, fp: Fingerprint, mine: Fingerprint) -> ModelMismatch:
    """The error for vectors of `mine` offered to an index of `fp`: both named, fixes."""
    extra = ""
    if fp.same_model(mine):
        extra = (f" (the same model, but its vectors were made at precision class "
                 f"{fp.precision!r}: --precision {CLASS_PRECISION.get(fp.precision, 'fp32')})")
    return ModelMismatch(
        f"index {path} was built with model {fp.describe()}, not {mine.describe()}{extra}. "
        "Use the index's model (leave --model out), re-embed the whole index with the new "
        "one (--reembed; `Index(..., reembed=True)`), or choose another index")
