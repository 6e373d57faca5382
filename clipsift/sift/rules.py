"""Decision rules of `clipsift filter`: prompts, thresholds, margins, top-N, presets, and
calibration from labelled examples.

Scores are cosine similarities between an image and each prompt (both unit vectors).
An item that could not be read or decoded is never kept (decision "error"). For the
others, the rule is the conjunction of the tests that are switched on:

    keep threshold   some keep prompt with a threshold scores >= it. A prompt's threshold
                     is its own (written "a photo of a dog@0.27") or the rule's
                     `threshold`; prompts with neither take no part in this test.
    drop threshold   no drop prompt with a threshold scores >= it.
    margin           best keep score - best drop score >= `margin`.
    presets          for each preset: preset score < its threshold (see clipsift.sift.presets).
    top N / fraction among the items passing the tests above, the N (or fraction x number
                     of readable items, rounded down) with the highest rank score; ties go
                     to the earlier item. Rank score: best keep - best drop when there
                     are drop prompts, else best keep.

With `invert`, readable items the rule would drop are kept and vice versa. Keep prompts
need a test that uses them: a threshold, the margin or top-N; with drop prompts and no
such test the margin rule with margin 0 is used ("best keep prompt beats every drop
prompt").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from clipsift.errors import UsageError
from clipsift.sift.presets import Preset, get_preset

_SUFFIX = re.compile(r"@(-?\d+(?:\.\d*)?|-?\.\d+)$")


@dataclass(frozen=True)
class Prompt:
    """One keep or drop prompt and its own threshold (None: the rule's default)."""

    text: str
    threshold: float | None = None


@dataclass(frozen=True)
class PresetUse:
    """A preset in a rule, with the threshold in force."""

    preset: Preset
    threshold: float


def parse_prompt(text: str) -> Prompt:
    """"a photo of a dog@0.27" -> Prompt("a photo of a dog", 0.27); no suffix: no threshold.

    Raises:
        UsageError: empty prompt text, or a threshold outside [-1, 1].
    """
    match = _SUFFIX.search(text)
    threshold = float(match.group(1)) if match else None
    body = text[: match.start()] if match else text
    body = body.strip()
    if not body:
        raise UsageError(f"empty prompt in {text!r}; write e.g. 'a photo of a dog' or "
                         "'a photo of a dog@0.27'")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise UsageError(f"threshold {threshold} of prompt {body!r} is not a cosine in [-1, 1]")
    return Prompt(body, threshold)


def parse_preset(text: str) -> PresetUse:
    """"nsfw" or "nsfw@0.05" -> PresetUse with the preset's default or the given threshold."""
    match = _SUFFIX.search(text)
    preset = get_preset(text[: match.start()] if match else text)
    return PresetUse(preset, float(match.group(1)) if match else preset.threshold)


@dataclass(frozen=True)
class Rule:
    """A filter rule (see the module docstring for the exact semantics).

    Example:
        >>> rule = Rule(keep=(Prompt("a photo of a dog"),), drop=(Prompt("a cartoon"),))
        >>> rule.resolved().margin
        0.0
    """

    keep: tuple[Prompt, ...] = ()
    drop: tuple[Prompt, ...] = ()
    presets: tuple[PresetUse, ...] = ()
    threshold: float | None = None
    margin: float | None = None
    top_n: int | None = None
    top_fraction: float | None = None
    invert: bool = False

    def columns(self) -> list[tuple[str, str]]:
        """(manifest column, prompt text) per scored prompt: keep, drop, then presets."""
        cols = [(f"keep:{p.text}", p.text) for p in self.keep]
        cols += [(f"drop:{p.text}", p.text) for p in self.drop]
        for use in self.presets:
            cols += [(f"{use.preset.name}:{t}", t) for t in use.preset.prompts]
        return cols

    def threshold_of(self, prompt: Prompt) -> float | None:
        return prompt.threshold if prompt.threshold is not None else self.threshold

    def uses_top(self) -> bool:
        return self.top_n is not None or self.top_fraction is not None

    def resolved(self) -> Rule:
        """Check the rule and fill in the default margin; raises UsageError when unusable."""
        _check_values(self)
        keep_thr = any(self.threshold_of(p) is not None for p in self.keep)
        drop_thr = any(self.threshold_of(p) is not None for p in self.drop)
        if self.keep and not (keep_thr or self.margin is not None or self.uses_top()):
            if not self.drop:
                raise UsageError(
                    "keep prompts need a rule: --threshold T (or 'prompt@T'), --top N, "
                    "--top-fraction F, --drop PROMPT (best keep prompt must beat every drop "
                    "prompt), or --calibrate EXAMPLES_DIR to pick a threshold"
                )
            return replace(self, margin=0.0)
        if self.drop and not self.keep and not drop_thr:
            raise UsageError("drop prompts without keep prompts need a threshold: "
                             "--threshold T or 'prompt@T'")
        return self

    def to_json(self) -> dict:
        """The rule as plain JSON (stored in the manifest metadata)."""
        return {
            "keep": [{"text": p.text, "threshold": p.threshold} for p in self.keep],
            "drop": [{"text": p.text, "threshold": p.threshold} for p in self.drop],
            "presets": [{"name": u.preset.name, "threshold": u.threshold} for u in self.presets],
            "threshold": self.threshold, "margin": self.margin, "top_n": self.top_n,
            "top_fraction": self.top_fraction, "invert": self.invert,
        }


def _check_values(rule: Rule) -> None:
    if not (rule.keep or rule.drop or rule.presets):
        raise UsageError("nothing to filter on: give --keep PROMPT, --drop PROMPT or --preset")
    texts = [p.text for p in rule.keep + rule.drop]
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    if dupes:
        raise UsageError(f"prompt given twice: {dupes[0]!r}")
    names = [u.preset.name for u in rule.presets]
    if len(set(names)) != len(names):
        raise UsageError("a preset is given twice")
    if rule.threshold is not None and not -1.0 <= rule.threshold <= 1.0:
        raise UsageError(f"--threshold {rule.threshold} is not a cosine in [-1, 1]")
    if rule.margin is not None and not (rule.keep and rule.drop):
        raise UsageError("--margin compares keep prompts with drop prompts: give both "
                         "--keep and --drop")
    if rule.top_n is not None and rule.top_fraction is not None:
        raise UsageError("give --top or --top-fraction, not both")
    if rule.top_n is not None and rule.top_n < 1:
        raise UsageError(f"--top must be at least 1, got {rule.top_n}")
    if rule.top_fraction is not None and not 0.0 < rule.top_fraction <= 1.0:
        raise UsageError(f"--top-fraction must be in (0, 1], got {rule.top_fraction}")
    if rule.uses_top() and not rule.keep:
        raise UsageError("--top/--top-fraction rank by keep prompts: give --keep")


@dataclass
class Decisions:
    """Per-item outcome of a rule over a score matrix (all arrays have one row per item)."""

    keep: np.ndarray  # bool [N]
    best_keep: np.ndarray  # float32 [N], NaN without keep prompts or for errors
    best_drop: np.ndarray  # float32 [N], NaN without drop prompts or for errors
    preset_scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 [N]


def _best(scores: np.ndarray, start: int, stop: int) -> np.ndarray:
    if stop <= start:
        return np.full(scores.shape[0], np.nan, np.float32)
    return scores[:, start:stop].max(axis=1)


def preset_scores(rule: Rule, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Preset name -> best flag cosine - best contrast cosine, per item."""
    out: dict[str, np.ndarray] = {}
    col = len(rule.keep) + len(rule.drop)
    for use in rule.presets:
        nf, nc = len(use.preset.flag), len(use.preset.contrast)
        out[use.preset.name] = _best(scores, col, col + nf) - _best(scores, col + nf,
                                                                     col + nf + nc)
        col += nf + nc
    return out


def decide(rule: Rule, scores: np.ndarray, ok: np.ndarray) -> Decisions:
    """Apply a resolved rule to a score matrix.

    Args:
        rule: a rule (resolved with `Rule.resolved()`).
        scores: float32 [N, P] cosines in `rule.columns()` order; rows of errors ignored.
        ok: bool [N], False for items that could not be read.

    Returns:
        `Decisions`; `keep` is False for every item with ok False.
    """
    scores = np.asarray(scores, np.float32).reshape(len(ok), len(rule.columns()))
    nk, nd = len(rule.keep), len(rule.drop)
    best_keep, best_drop = _best(scores, 0, nk), _best(scores, nk, nk + nd)
    passes = ok.copy()
    keep_t = [(i, rule.threshold_of(p)) for i, p in enumerate(rule.keep)]
    keep_t = [(i, t) for i, t in keep_t if t is not None]
    if keep_t:
        passes &= np.any([scores[:, i] >= t for i, t in keep_t], axis=0)
    for j, p in enumerate(rule.drop):
        t = rule.threshold_of(p)
        if t is not None:
            passes &= scores[:, nk + j] < t
    if rule.margin is not None:
        passes &= (best_keep - best_drop) >= rule.margin
    presets = preset_scores(rule, scores)
    for use in rule.presets:
        passes &= presets[use.preset.name] < use.threshold
    if rule.uses_top():
        passes = _top(rule, passes, rank_score(rule, best_keep, best_drop), int(ok.sum()))
    keep = ok & ~passes if rule.invert else passes
    return Decisions(keep, _nan_where(best_keep, ok), _nan_where(best_drop, ok),
                     {k: _nan_where(v, ok) for k, v in presets.items()})


def _nan_where(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok, values, np.nan).astype(np.float32)


def rank_score(rule: Rule, best_keep: np.ndarray, best_drop: np.ndarray) -> np.ndarray:
    """What top-N ranks by (and what calibration thresholds): the margin or best keep."""
    return best_keep - best_drop if rule.drop else best_keep


def _top(rule: Rule, passes: np.ndarray, rank: np.ndarray, n_ok: int) -> np.ndarray:
    n = rule.top_n if rule.top_n is not None else math.floor(rule.top_fraction * n_ok + 1e-9)
    candidates = np.flatnonzero(passes)
    order = np.lexsort((candidates, -rank[candidates]))  # score desc, then input order
    out = np.zeros_like(passes)
    out[candidates[order[:n]]] = True
    return out


# ---- calibration -------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """A threshold chosen from labelled examples, and how well it separates them.

    Attributes:
        target: what was set: "threshold" (keep prompts only), "margin" (keep and drop
            prompts) or "preset:NAME" (one preset, no prompts).
        value: the chosen value.
        precision, recall, f1: on the examples at that value (in-sample, optimistic).
        cv_precision, cv_recall: from cross-validation (threshold picked on the other
            folds: leave-one-out up to 10 examples, else 10 folds): the honest estimate.
        positives, negatives: numbers of examples.
    """

    target: str
    value: float
    precision: float
    recall: float
    f1: float
    cv_precision: float
    cv_recall: float
    positives: int
    negatives: int


def calibration_scores(rule: Rule, scores: np.ndarray) -> tuple[str, np.ndarray]:
    """(target, per-example score where higher means 'keep') for calibrating `rule`."""
    if rule.uses_top():
        raise UsageError("--calibrate picks a threshold; it does not combine with --top")
    nk, nd = len(rule.keep), len(rule.drop)
    if rule.keep:
        if any(p.threshold is not None for p in rule.keep + rule.drop):
            raise UsageError("--calibrate sets the threshold itself: remove the '@T' "
                             "thresholds from the prompts")
        best_keep, best_drop = _best(scores, 0, nk), _best(scores, nk, nk + nd)
        return ("margin" if rule.drop else "threshold"), rank_score(rule, best_keep, best_drop)
    if len(rule.presets) == 1 and not rule.drop:
        name = rule.presets[0].preset.name
        return f"preset:{name}", -preset_scores(rule, scores)[name]
    raise UsageError("--calibrate needs keep prompts, or exactly one preset and no prompts")


def _pick(s: np.ndarray, y: np.ndarray) -> float:
    """The cut maximising F1 of (s >= cut) vs y; ties go to the widest gap between scores."""
    values = np.unique(s)
    cuts = np.concatenate([[values[0] - 1e-3], (values[1:] + values[:-1]) / 2,
                           [values[-1] + 1e-3]])
    gaps = np.concatenate([[1e-3], np.diff(values), [1e-3]])
    pred = s[None, :] >= cuts[:, None]  # [C, N]
    tp = (pred & y).sum(1)
    f1 = 2 * tp / np.maximum(pred.sum(1) + y.sum(), 1)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(cuts[best[np.argmax(gaps[best])]])


def _prf(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    tp = float((pred & y).sum())
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(y.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def calibrate(rule: Rule, positive: np.ndarray, negative: np.ndarray) -> Calibration:
    """Pick the threshold (or margin) that best separates labelled examples.

    Args:
        rule: the rule to calibrate (keep prompts, optionally drop prompts; or one preset).
        positive: float32 [Np, P] scores of images that should be kept.
        negative: float32 [Nn, P] scores of images that should be dropped.

    Returns:
        A `Calibration`; apply it with `apply_calibration`.

    Raises:
        UsageError: no positive or no negative example, or a rule that cannot be calibrated.
    """
    if len(positive) == 0 or len(negative) == 0:
        raise UsageError(f"--calibrate needs positive and negative examples; found "
                         f"{len(positive)} positive and {len(negative)} negative images")
    target, s = calibration_scores(rule, np.concatenate([positive, negative]))
    y = np.arange(len(s)) < len(positive)
    cut = _pick(s, y)
    precision, recall, f1 = _prf(s >= cut, y)
    folds = min(len(s), 10)
    cv_pred = np.zeros_like(y)
    for fold in range(folds):
        test = np.arange(len(s)) % folds == fold
        if y[~test].all() or not y[~test].any():
            cv_pred[test] = y[~test].all()
            continue
        cv_pred[test] = s[test] >= _pick(s[~test], y[~test])
    cv_p, cv_r, _ = _prf(cv_pred, y)
    return Calibration(target, cut, precision, recall, f1, cv_p, cv_r, int(y.sum()),
                       int((~y).sum()))


def apply_calibration(rule: Rule, cal: Calibration) -> Rule:
    """The rule with the calibrated threshold, margin or preset threshold in place."""
    if cal.target == "threshold":
        return replace(rule, threshold=cal.value)
    if cal.target == "margin":
        return replace(rule, margin=cal.value)
    use = rule.presets[0]
    return replace(rule, presets=(PresetUse(use.preset, -cal.value),))


def score_matrix(vectors: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
    """Cosines [N, P] of unit image vectors [N, D] against unit prompt vectors [P, D]."""
    return (np.asarray(vectors, np.float32) @ np.asarray(text_vectors, np.float32).T
            ).astype(np.float32)


def prompt_vectors(model, rule: Rule) -> np.ndarray:
    """Unit text vectors [P, D] of the rule's prompts, in `rule.columns()` order."""
    texts: Sequence[str] = [t for _, t in rule.columns()]
    return model.encode_texts(list(texts))
