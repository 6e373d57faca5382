"""The evaluation report's confusion matrix: the colour of every cell is the colour its
colour bar gives to the number the cell prints, checked on the rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from clipsift.evaluation import report
from clipsift.evaluation.evaluate import compute_metrics


def metrics(classes: int, per_class: list[int] | None = None, seed: int = 0):
    """Scores for uneven class sizes and a model right about 60-90% of the time."""
    rng = np.random.default_rng(seed)
    sizes = per_class or rng.integers(3, 12, classes).tolist()
    y = np.repeat(np.arange(classes), sizes)
    scores = rng.normal(size=(len(y), classes))
    scores[np.arange(len(y)), y] += 1.5
    return compute_metrics(y, scores, [f"class {i}" for i in range(classes)])


@pytest.fixture()
def drawn(monkeypatch):
    """Render a confusion plot as the report does and return (figure, RGB pixels [H, W, 3])."""
    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "data:,")

    def draw(m):
        report.confusion_plot(m, [c.name for c in m.per_class])
        fig = figures[-1]
        fig.set_dpi(report.PLOT_DPI)  # the resolution the report's PNG is written at
        fig.canvas.draw()
        return fig, np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255

    yield draw
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)


def pixels(rgba: np.ndarray, transform, points: np.ndarray) -> np.ndarray:
    """RGB at data points [N, 2] (x, y) of an axes, [N, 3]."""
    xy = transform.transform(points)
    rows = np.clip((rgba.shape[0] - xy[:, 1]).astype(int), 0, rgba.shape[0] - 1)
    cols = np.clip(xy[:, 0].astype(int), 0, rgba.shape[1] - 1)
    return rgba[rows, cols]


def bar_colours(fig, rgba: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The colour the figure's colour bar shows at each value."""
    bar = fig.axes[1]
    lo, hi = bar.get_ylim()
    assert (lo, hi) == (0.0, 1.0)
    inside = np.clip(values, 0.005, 0.995)  # not on the bar's frame line
    return pixels(rgba, bar.transData, np.stack([np.full(len(values), 0.5), inside], 1))


def shares(m) -> np.ndarray:
    conf = m.confusion.astype(float)
    return conf / np.maximum(conf.sum(1, keepdims=True), 1)


def test_small_matrix_cells_print_what_their_colour_and_the_bar_say(drawn):
    m = metrics(5, per_class=[40, 10, 20, 5, 25])
    fig, rgba = drawn(m)
    ax = fig.axes[0]
    printed = {}
    for text in ax.texts:
        j, i = (round(v) for v in text.get_position())
        first = text.get_text().split("\n")
        assert first[0].endswith("%"), f"cell ({i}, {j}) prints {text.get_text()!r}, not a share"
        printed[i, j] = float(first[0].rstrip("%")) / 100
        assert int(first[1]) == m.confusion[i, j]  # the count, under the share
    c = len(m.per_class)
    cells = [(i, j) for i in range(c) for j in range(c)]
    values = np.array([printed.get(cell, 0.0) for cell in cells])
    assert np.allclose(values, shares(m).ravel(), atol=0.005)  # printed to the percent
    corner = np.array([(j - 0.38, i - 0.38) for i, j in cells])  # away from the text
    got = pixels(rgba, ax.transData, corner)
    want = bar_colours(fig, rgba, values)
    assert np.abs(got - want).max() < 0.03, "a cell's colour is not the bar's colour for its number"


def test_large_matrix_is_not_resampled_into_other_colours(drawn):
    """600 classes: every cell is drawn at least MIN_CELL_PX wide in its own colour (no
    averaging with its neighbours into a paler diagonal)."""
    m = metrics(600, seed=1)
    fig, rgba = drawn(m)
    ax = fig.axes[0]
    c = 600
    width = np.diff(ax.transData.transform([(0, 0), (1, 1)]), axis=0)[0]
    assert abs(width[0]) >= report.MIN_CELL_PX and abs(width[1]) >= report.MIN_CELL_PX
    inner = np.arange(1, c - 1)  # the outer ring touches the frame line
    ii, jj = np.meshgrid(inner, inner, indexing="ij")
    centres = np.stack([jj.ravel(), ii.ravel()], 1).astype(float)
    got = pixels(rgba, ax.transData, centres)
    want = bar_colours(fig, rgba, shares(m)[ii.ravel(), jj.ravel()])
    diff = np.abs(got - want).max(axis=1)
    diagonal = diff.reshape(len(inner), len(inner)).diagonal()
    assert diagonal.max() < 0.03, f"diagonal cells drawn up to {diagonal.max():.2f} off"
    assert diff.max() < 0.03, f"{(diff >= 0.03).sum()} cells not in the bar's colour"
