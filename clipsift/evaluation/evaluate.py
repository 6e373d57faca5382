"""Zero-shot evaluation on labelled data: metrics, prompt comparison, search, few-shot probe.

Images are embedded once (`clipsift.evaluation.datasets.embed_dataset`, cached); every prompt set is
then scored on the same vectors, so comparing wordings costs only the text side.

    >>> ds = load_dataset("flowers/")
    >>> emb = embed_dataset(model, ds, cache=EmbeddingCache(default_cache_path()))
    >>> ev = evaluate(model, ds, emb, ["{}", "{} flower", "a picture of a {} flower"])
    >>> ev.best.name, ev.best.metrics.top1
    ('a picture of a {} flower', 0.97)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clipsift.errors import UsageError
from clipsift.evaluation.datasets import Dataset, DatasetEmbeddings
from clipsift.evaluation.prompts import DEFAULT_PROMPTS as DEFAULT_PROMPTS  # re-exported
from clipsift.evaluation.prompts import PromptSet, TextBank, prompt_sets_for
from clipsift.evaluation.prompts import parse_prompts as parse_prompts  # re-exported
from clipsift.zeroshot.templates import TEMPLATE_SETS, named_templates

#: Single templates tried by the prompt search (besides the named sets and the user's).
SEARCH_TEMPLATES = (
    "{}", "a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}.",
    "a good photo of a {}.", "a close-up photo of a {}.", "a cropped photo of the {}.",
    "a bright photo of a {}.", "a dark photo of the {}.", "a low resolution photo of a {}.",
    "a blurry photo of a {}.", "a photo of a small {}.", "a photo of a large {}.",
    "itap of a {}.", "art of the {}.", "a drawing of a {}.", "a {} in a photo.",
)
ENSEMBLE_SIZES = (3, 5, 8)
TOP_K = 5


# ---- metrics --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassMetrics:
    """One class: images (support), images predicted as it, precision and recall."""

    name: str
    support: int
    predicted: int
    precision: float
    recall: float


@dataclass
class Metrics:
    """Classification quality on N images.

    Attributes:
        n: images scored.
        top1: fraction whose best class is the true one.
        top5: fraction whose true class is among the 5 best; None with 5 classes or fewer.
        mean_recall: mean over classes present of per-class recall (balanced accuracy).
        per_class: precision/recall per class (precision 0 when nothing was predicted as it).
        confusion: int64 [C, C], rows = true class, columns = predicted class.
    """

    n: int
    top1: float
    top5: float | None
    mean_recall: float
    per_class: list[ClassMetrics]
    confusion: np.ndarray

    def to_dict(self) -> dict:
        return {"n": self.n, "top1": self.top1, "top5": self.top5,
                "mean_recall": self.mean_recall,
                "per_class": [vars(c) for c in self.per_class],
                "confusion": self.confusion.tolist()}


def compute_metrics(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> Metrics:
    """Metrics from true labels int [N] and class scores [N, C] (higher = more likely).

    Example:
        >>> m = compute_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]), ["a", "b"])
        >>> m.top1, m.mean_recall
        (0.5, 0.5)
    """
    c = len(classes)
    y = np.asarray(y_true, np.int64)
    pred = scores.argmax(axis=1)
    conf = np.zeros((c, c), np.int64)
    np.add.at(conf, (y, pred), 1)
    support, predicted, hits = conf.sum(axis=1), conf.sum(axis=0), np.diag(conf)
    recall = np.divide(hits, support, out=np.zeros(c), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros(c), where=predicted > 0)
    top5 = None
    if c > TOP_K:
        true_score = scores[np.arange(len(y)), y][:, None]
        top5 = float(np.mean((scores > true_score).sum(axis=1) < TOP_K)) if len(y) else 0.0
    per_class = [ClassMetrics(classes[i], int(support[i]), int(predicted[i]),
                              float(precision[i]), float(recall[i])) for i in range(c)]
    return Metrics(len(y), float(hits.sum() / max(1, len(y))), top5,
                   float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
                   per_class, conf)


def zero_shot_scores(vectors: np.ndarray, weights: np.ndarray, logit_scale: float
                     ) -> np.ndarray:
    """Softmax probabilities [N, C] of unit image vectors [N, D] against class weights [C, D]."""
    logits = float(logit_scale) * (vectors @ weights.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


# ---- results --------------------------------------------------------------------------------
@dataclass
class PromptSetResult:
    """A prompt set scored on every image; `predicted`/`confidence`/`true_probability` are
    per image, aligned with `Evaluation.rows`."""

    name: str
    per_class: int
    metrics: Metrics
    predicted: np.ndarray = field(repr=False)
    confidence: np.ndarray = field(repr=False)
    true_probability: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "prompts_per_class": self.per_class,
                **self.metrics.to_dict()}


@dataclass(frozen=True)
class SearchCandidate:
    """One wording tried by the prompt search, scored on the tuning part only."""

    name: str
    templates: tuple[str, ...]
    top1: float
    mean_recall: float


@dataclass
class HeldOutRow:
    """A method scored on the held-out images: method is "zero-shot", "searched prompts"
    (chosen on the tuning part) or "few-shot probe"."""

    name: str
    method: str
    metrics: Metrics


@dataclass
class HeldOut:
    """Comparisons that need labels to choose or fit something, made on images kept apart.

    Attributes:
        tune_size: images used to choose prompts / fit the probe.
        size: held-out images every row below is scored on.
        rows: zero-shot prompt sets, the searched winner, and the few-shot probe.
        candidates: prompt search candidates, best first (empty without a search).
        winner: the searched winner's name, or None.
        few_shot: K images per class used to fit the probe, or None.
    """

    tune_size: int
    size: int
    rows: list[HeldOutRow]
    candidates: list[SearchCandidate] = field(default_factory=list)
    winner: str | None = None
    few_shot: int | None = None

    def to_dict(self) -> dict:
        return {"tune_size": self.tune_size, "size": self.size, "winner": self.winner,
                "few_shot": self.few_shot,
                "rows": [{"name": r.name, "method": r.method, **r.metrics.to_dict()}
                         for r in self.rows],
                "candidates": [vars(c) | {"templates": list(c.templates)}
                               for c in self.candidates]}


@dataclass
class Evaluation:
    """Everything one evaluation found. `rows` index `Dataset.samples` (readable images)."""

    model: str
    dataset: str
    kind: str
    classes: list[str]
    counts: list[int]
    rows: np.ndarray = field(repr=False)
    y_true: np.ndarray = field(repr=False)
    prompt_sets: list[PromptSetResult]
    best_index: int
    failures: list[tuple[str, str]]
    notes: list[str]
    embedding: dict[str, int]
    heldout: HeldOut | None = None

    @property
    def best(self) -> PromptSetResult:
        return self.prompt_sets[self.best_index]

    def to_dict(self) -> dict:
        from clipsift.inputs.keys import json_fields

        return {"model": self.model, **json_fields("dataset", self.dataset), "kind": self.kind,
                "classes": self.classes, "images": int(sum(self.counts)),
                "scored": len(self.rows), "best": self.best.name,
                "prompt_sets": [p.to_dict() for p in self.prompt_sets],
                "heldout": self.heldout.to_dict() if self.heldout else None,
                "failures": [{**json_fields("path", k), "error": e} for k, e in self.failures],
                "notes": self.notes, "embedding": self.embedding}


@dataclass(frozen=True)
class EvalOptions:
    """search: run the prompt search; few_shot: K images per class for a probe;
    holdout: fraction of each class kept for held-out scoring; seed: split seed."""

    search: bool = False
    few_shot: int | None = None
    holdout: float = 0.5
    seed: int = 0


# ---- scoring --------------------------------------------------------------------------------
def _rank_key(metrics: Metrics, per_class: int) -> tuple[float, float, int]:
    """Best = highest top-1, then highest mean recall, then fewest prompts."""
    return (round(metrics.top1, 12), round(metrics.mean_recall, 12), -per_class)


def _score_set(bank: TextBank, ps: PromptSet, vectors: np.ndarray, y: np.ndarray,
               classes: Sequence[str]) -> PromptSetResult:
    probs = zero_shot_scores(vectors, bank.class_weights(ps), bank.model.logit_scale)  # [N, C]
    pred = probs.argmax(axis=1)
    rows = np.arange(len(y))
    return PromptSetResult(ps.name, ps.per_class, compute_metrics(y, probs, classes), pred,
                           probs[rows, pred].astype(np.float32),
                           probs[rows, y].astype(np.float32))


def holdout_split(y: np.ndarray, classes: Sequence[str], holdout: float, min_tune: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions per class into (tune, held-out), stratified and seeded.

    Each class keeps round(n * (1 - holdout)) images for tuning (at least `min_tune`) and at
    least one held out.

    Raises:
        UsageError: a class has too few images for `min_tune` + 1.
    """
    if not 0.0 < holdout < 1.0:
        raise UsageError(f"holdout must be between 0 and 1, got {holdout}")
    rng = np.random.default_rng(seed)
    tune: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for c, name in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < min_tune + 1:
            raise UsageError(f"class {name!r} has {len(idx)} readable image(s); this needs at "
                             f"least {min_tune + 1} per class (lower --few-shot, or add images)")
        n_tune = min(len(idx) - 1, max(min_tune, round(len(idx) * (1.0 - holdout))))
        tune.append(idx[:n_tune])
        held.append(idx[n_tune:])
    return np.sort(np.concatenate(tune)), np.sort(np.concatenate(held))


def search_candidates(bank: TextBank, classes: Sequence[str], vectors: np.ndarray,
                      y: np.ndarray, extra: Sequence[PromptSet] = ()
                      ) -> tuple[list[SearchCandidate], dict[str, PromptSet]]:
    """Score single templates, top-k ensembles of the best singles, the named sets and
    `extra` sets on (vectors, y); returns (candidates best first, their prompt sets)."""
    sets: dict[str, PromptSet] = {}
    for t in SEARCH_TEMPLATES:
        sets[t] = PromptSet.from_templates(t, [t], classes)
    for ps in extra:
        sets.setdefault(ps.name, ps)

    def score(ps: PromptSet) -> SearchCandidate:
        m = compute_metrics(y, vectors @ bank.class_weights(ps).T, classes)
        return SearchCandidate(ps.name, ps.templates or (), m.top1, m.mean_recall)

    def key(c: SearchCandidate) -> tuple[float, float, int]:
        return (round(c.top1, 12), round(c.mean_recall, 12), -sets[c.name].per_class)

    scored = [score(ps) for ps in sets.values()]
    singles = sorted((c for c in scored if len(c.templates) == 1), key=key, reverse=True)
    for k in ENSEMBLE_SIZES:
        if k < len(singles):
            ps = PromptSet.from_templates(f"top-{k} ensemble", [t for c in singles[:k]
                                                                for t in c.templates], classes)
            sets[ps.name] = ps
            scored.append(score(ps))
    for name in TEMPLATE_SETS:
        if name not in sets:
            sets[name] = PromptSet.from_templates(name, named_templates(name), classes)
            scored.append(score(sets[name]))
    return sorted(scored, key=key, reverse=True), sets


def few_shot_probe(vectors: np.ndarray, y: np.ndarray, tune: np.ndarray, held: np.ndarray,
                   k: int, classes: Sequence[str], seed: int = 0) -> Metrics:
    """Fit a logistic-regression probe on k random tuning images per class; score held-out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed + 1)
    train = np.concatenate([rng.choice(tune[y[tune] == c], size=k, replace=False)
                            for c in range(len(classes))])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(vectors[train], y[train])
    probs = np.zeros((len(held), len(classes)))
    probs[:, probe.classes_] = probe.predict_proba(vectors[held])
    return compute_metrics(y[held], probs, classes)


def _heldout(bank: TextBank, sets: list[PromptSet], vectors: np.ndarray, y: np.ndarray,
             classes: Sequence[str], opts: EvalOptions) -> HeldOut:
    k = opts.few_shot
    if k is not None and k < 1:
        raise UsageError(f"--few-shot needs K >= 1 images per class, got {k}")
    tune, held = holdout_split(y, classes, opts.holdout, max(1, k or 0), opts.seed)
    out = HeldOut(len(tune), len(held), [], few_shot=k)
    for ps in sets:
        m = compute_metrics(y[held], vectors[held] @ bank.class_weights(ps).T, classes)
        out.rows.append(HeldOutRow(ps.name, "zero-shot", m))
    if opts.search:
        cands, by_name = search_candidates(bank, classes, vectors[tune], y[tune], sets)
        out.candidates, out.winner = cands, cands[0].name
        w = by_name[cands[0].name]
        m = compute_metrics(y[held], vectors[held] @ bank.class_weights(w).T, classes)
        out.rows.append(HeldOutRow(w.name, "searched prompts", m))
    if k is not None:
        m = few_shot_probe(vectors, y, tune, held, k, classes, opts.seed)
        out.rows.append(HeldOutRow(f"logistic regression, {k} per class", "few-shot probe", m))
    return out


def evaluate(model, dataset: Dataset, embeddings: DatasetEmbeddings,
             prompts: Sequence[str] | None = None, options: EvalOptions | None = None
             ) -> Evaluation:
    """Score prompt sets (and optionally a prompt search and a few-shot probe) on a dataset.

    Args:
        model: the ClipModel the embeddings were made with (used for the text side).
        dataset: from `clipsift.evaluation.datasets.load_dataset`.
        embeddings: from `clipsift.evaluation.datasets.embed_dataset(model, dataset)`.
        prompts: `--prompts` values (templates with `{}`, prompt files, named sets);
            None compares DEFAULT_PROMPTS. A Roboflow tokenization file is always included.
        options: search / few-shot / split settings.
    Returns:
        An Evaluation; `best` is the prompt set with the highest top-1 on all images.
    Raises:
        UsageError: no readable image, bad prompts, or too few images for the split.
    """
    opts = options or EvalOptions()
    if len(embeddings.rows) == 0:
        raise UsageError(f"none of the {len(dataset.samples)} images of {dataset.root!r} could "
                         "be read; see the listed failures")
    y = dataset.labels[embeddings.rows]
    vectors = embeddings.vectors
    bank = TextBank(model)
    sets = prompt_sets_for(dataset, prompts)
    results = [_score_set(bank, ps, vectors, y, dataset.classes) for ps in sets]
    best = max(range(len(results)),
               key=lambda i: _rank_key(results[i].metrics, results[i].per_class))
    heldout = None
    if opts.search or opts.few_shot is not None:
        heldout = _heldout(bank, sets, vectors, y, dataset.classes, opts)
    stats = {"encoded": embeddings.encoded, "from_cache": embeddings.from_cache,
             "from_index": embeddings.from_index, "decode": embeddings.decode_mode}
    notes = list(dataset.notes)
    if embeddings.decode_mode != "exact":
        notes.append("images decoded with fast decoding (large JPEGs at reduced scale): "
                     "vectors and scores are approximate")
    return Evaluation(model.name, dataset.root, dataset.kind, list(dataset.classes),
                      dataset.counts(), embeddings.rows, y, results, best,
                      list(embeddings.failures), notes, stats, heldout)
