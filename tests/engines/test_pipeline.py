"""clipsift.engines.local: bulk embedding matches the model, keeps order, survives bad files."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsift.engines.base import EmbedResult, PipelineStats
from clipsift.engines.local import embed_items, embed_paths
from clipsift.errors import UsageError
from clipsift.inputs.sources import Item, iter_items
from tests.support.fake_model import FakeModel, _fake_preprocess
from tests.support.helpers import extract_photos


@pytest.fixture(scope="module")
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """30 generated images of varied colours and sizes, plus a few real photos."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    for i in range(30):
        w, h = int(rng.integers(16, 90)), int(rng.integers(16, 90))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i:02d}.{('png', 'jpg', 'webp')[i % 3]}")
    extract_photos(root, 6)
    return root


@pytest.fixture(scope="module")
def bad_corpus(corpus: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    good = sorted(corpus.iterdir())
    for i, src in enumerate(good[:10]):
        (root / f"{i:02d}-good{src.suffix}").write_bytes(src.read_bytes())
    (root / "03a-empty.jpg").write_bytes(b"")
    (root / "05a-text.jpg").write_text("not an image")
    jpeg = next(p for p in good if p.suffix == ".jpg").read_bytes()
    (root / "07a-cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return root


def paths_of(folder: Path) -> list[str]:
    return [it.key for it in iter_items([str(folder)])]


def vectors(results: list[EmbedResult]) -> np.ndarray:
    return np.stack([r.vector for r in results])


@pytest.mark.parametrize("workers", [0, 2])
def test_matches_encode_images_in_order(model, corpus: Path, workers: int) -> None:
    paths = paths_of(corpus)
    stats = PipelineStats()
    batches = list(embed_items(model, iter_items([str(corpus)]), batch_size=8,
                               workers=workers, stats=stats))
    results = [r for b in batches for r in b]
    assert [len(b) for b in batches[:-1]] == [8] * (len(batches) - 1)
    assert [r.item.key for r in results] == paths
    assert all(r.error is None for r in results)
    got = vectors(results)
    assert got.dtype == np.float32 and got.shape == (len(paths), model.dim)
    np.testing.assert_allclose(got, model.encode_images(paths), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for r in results:
        with Image.open(r.item.key) as im:
            assert (r.width, r.height) == im.size
    assert stats.items == len(paths) and stats.errors == 0 and stats.workers == workers
    assert stats.images_per_second > 0 and stats.encode_seconds > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_become_errors(model, bad_corpus: Path, workers: int) -> None:
    results, stats = embed_paths(model, [str(bad_corpus)], batch_size=4, workers=workers)
    assert [r.item.key for r in results] == paths_of(bad_corpus)
    errors = {os.path.basename(r.item.key): r.error for r in results if r.error}
    assert set(errors) == {"03a-empty.jpg", "05a-text.jpg", "07a-cut.jpg"}
    assert "empty file" in errors["03a-empty.jpg"]
    assert "text" in errors["05a-text.jpg"]
    assert "truncated" in errors["07a-cut.jpg"]
    failed = [r for r in results if r.error]
    assert all(r.vector is None and r.width is None for r in failed)
    good = [r for r in results if not r.error]
    np.testing.assert_allclose(vectors(good), model.encode_images([r.item.key for r in good]),
                               atol=1e-6)
    assert stats.items == 13 and stats.errors == 3


def test_missing_listed_file_is_an_item_error(model, corpus: Path, tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    first = paths_of(corpus)[0]
    lst.write_text(f"{first}\nno-such-file.png\n")
    results, stats = embed_paths(model, [str(lst)], workers=0)
    assert results[0].error is None
    assert results[1].error == "file not found" and stats.errors == 1


def test_tar_shard_members_match_files(model, corpus: Path, tmp_path: Path) -> None:
    paths = paths_of(corpus)[:12]
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for p in paths:
            tf.add(p, arcname=f"s/{os.path.basename(p)}")
    results, _ = embed_paths(model, [str(shard)], batch_size=5, workers=2)
    assert [r.item.key.split("::")[1] for r in results] == [
        f"s/{os.path.basename(p)}" for p in paths
    ]
    np.testing.assert_allclose(vectors(results), model.encode_images(paths), atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_event_ends_run_and_workers(model, corpus: Path, workers: int) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def on_batch(batch: list[EmbedResult]) -> None:
        seen.append(len(batch))
        stop.set()

    batches = list(embed_items(model, iter_items([str(corpus)]), batch_size=4,
                               workers=workers, on_batch=on_batch, stop=stop))
    assert [len(b) for b in batches] == [4] and seen == [4]
    assert not mp.active_children()


def endless(corpus: Path, pulled: list[int]) -> Iterator[Item]:
    items = list(iter_items([str(corpus)]))
    for i in itertools.count():
        pulled.append(i)
        yield items[i % len(items)]


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_bounded_on_endless_input(model, corpus: Path, workers: int) -> None:
    pulled: list[int] = []
    run = embed_items(model, endless(corpus, pulled), batch_size=8, workers=workers, prefetch=2)
    for _ in range(3):
        assert len(next(run)) == 8
    run.close()
    assert len(pulled) < 8 * 3 + 2 * 8 + 64  # read ahead is bounded, not the whole input
    assert not mp.active_children()


def test_auto_workers_small_job_decodes_inline(model, corpus: Path) -> None:
    results, stats = embed_paths(model, [str(corpus)], batch_size=64)
    assert stats.workers == 0 and len(results) == len(paths_of(corpus))


def test_bad_options(model) -> None:
    for kw in ({"batch_size": 0}, {"workers": -1}, {"prefetch": 0}):
        with pytest.raises(UsageError):
            next(embed_items(model, [], **kw))
    with pytest.raises(UsageError, match="nowhere"):
        embed_paths(model, ["/nowhere/at/all"])


def test_empty_input(model) -> None:
    assert list(embed_items(model, [], workers=0)) == []


def crash_on_tall(image: Image.Image) -> torch.Tensor:
    """A preprocess whose 'decoder' kills its worker process on one specific image."""
    if image.size == (13, 71):
        os._exit(3)
    return _fake_preprocess(image)


def test_worker_crash_is_isolated_to_its_item(corpus: Path, tmp_path: Path) -> None:
    model = FakeModel()
    model.preprocess = crash_on_tall
    paths = paths_of(corpus)[:9]
    killer = tmp_path / "killer.png"
    Image.new("RGB", (13, 71), (9, 9, 9)).save(killer)
    items = [Item(p, p) for p in paths[:4]] + [Item(str(killer), str(killer))] + [
        Item(p, p) for p in paths[4:]
    ]
    results = [r for b in embed_items(model, items, batch_size=4, workers=2) for r in b]
    assert [r.item.key for r in results] == [it.key for it in items]
    assert "crashed" in results[4].error
    ok = [r for r in results if r.error is None]
    assert len(ok) == 9
    np.testing.assert_allclose(vectors(ok), FakeModel().encode_images(paths), atol=1e-6)
    assert not mp.active_children()


def test_crash_while_chunks_are_still_being_submitted(corpus: Path, tmp_path: Path) -> None:
    """A worker dies on the first chunk while the reader still feeds chunks in (slowly): the
    submits that meet the broken pool are redone after the crash is isolated, not raised."""
    model = FakeModel()
    model.preprocess = crash_on_tall
    killer = tmp_path / "killer.png"
    Image.new("RGB", (13, 71), (9, 9, 9)).save(killer)
    paths = paths_of(corpus)[:16]

    def slow_items() -> Iterator[Item]:
        yield Item(str(killer), str(killer))
        for p in paths:
            time.sleep(0.15)  # the crash happens while these are still arriving
            yield Item(p, p)

    results = [r for b in embed_items(model, slow_items(), batch_size=1, workers=2,
                                      prefetch=64) for r in b]
    assert [r.item.key for r in results] == [str(killer), *paths]
    assert "crashed" in results[0].error
    assert all(r.error is None for r in results[1:])
    np.testing.assert_allclose(vectors(results[1:]), FakeModel().encode_images(paths),
                               atol=1e-6)
    assert not mp.active_children()


@pytest.mark.slow
def test_workers_overlap_decode_with_slow_encoder(tmp_path: Path) -> None:
    """With a slow encoder, decode workers beat in-process decoding (200 real photos)."""
    photos = extract_photos(tmp_path, 200)
    if len(photos) < 200:
        pytest.skip("imagenet-samples.tar not available")

    class SlowFake(FakeModel):
        def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
            time.sleep(0.004 * pixels.shape[0])  # like a small model on CPU
            return super()._image_features(pixels)

    model = SlowFake()
    model.image_size = 224  # decode photo-sized images, as a real model would
    embed_paths(model, [str(p) for p in photos[:8]], workers=2)  # warm the process server
    timings = {}
    for workers in (0, 2):
        start = time.perf_counter()
        embed_paths(model, [str(tmp_path)], batch_size=32, workers=workers)
        timings[workers] = time.perf_counter() - start
    assert timings[2] < timings[0]


_KILLED_PARENT = """
import itertools, multiprocessing as mp, sys, time
from multiprocessing import forkserver
from tests.support.fake_model import FakeModel
from clipsift.engines.local import embed_items
from clipsift.inputs.sources import iter_items

items = list(iter_items([sys.argv[1]]))
run = embed_items(FakeModel(), itertools.cycle(items), batch_size=4, workers=2)
next(run)
server = getattr(forkserver._forkserver, "_forkserver_pid", None)
print(*[p.pid for p in mp.active_children()], server or "", flush=True)
time.sleep(600)
"""


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ")[1].startswith("Z"):
                    return True  # exited, waiting for its (dead) parent's reaper
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_workers_exit_when_parent_is_killed(corpus: Path) -> None:
    """SIGKILL skips every clean-up: the workers must notice and not linger as orphans."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, str(corpus)],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert len(pids) >= 2, "the child did not report its workers"
    lingering = [pid for pid in pids if not _gone(pid, timeout=15)]
    assert not lingering
