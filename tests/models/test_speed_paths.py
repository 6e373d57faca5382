"""Speed paths give the reference results: trimmed text padding, int8 and bf16 precisions,
precision recorded and selectable from the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clipsift
from clipsift.cli.main import main
from clipsift.errors import UsageError
from clipsift.models import apply_precision
from clipsift.models.openclip_backend import (
    OpenClipModel,
    encode_text_trimmed,
    trimmable_pool_type,
)
from clipsift.models.precision import check_precision
from tests.support import tinymodels

MIXED = [
    "",
    "a dog",
    "a photo of a small red car parked next to a blue house under a cloudy sky.",
    "一只猫的照片",
    "word " * 70,  # 70 content tokens: still fits the 77-token context, no chunking
    "a cat",
]


@pytest.fixture(scope="module")
def tiny(tiny_vit) -> OpenClipModel:
    return clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """int8 exports go to a temporary cache, never the user's."""
    monkeypatch.setenv("CLIPSIFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _full_padding(model: OpenClipModel, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        feats = model.module.encode_text(model.tokenizer(texts))  # [N, D], all 77 tokens
    return clipsift.models.l2_normalize(feats.numpy())


def test_trimmed_text_equals_full_padding_mixed_lengths(tiny):
    assert tiny.trim_pool == "argmax"
    got = tiny.encode_texts(MIXED)
    assert np.abs(got - _full_padding(tiny, MIXED)).max() < 1e-5


def test_trimmed_text_batches_of_one_and_order_kept(tiny):
    batched = tiny.encode_texts(MIXED, batch_size=4)  # sorted by length inside
    for i, text in enumerate(MIXED):
        alone = tiny.encode_texts([text])
        assert np.abs(batched[i] - alone[0]).max() < 1e-5


def _clip(text_extra: dict) -> torch.nn.Module:
    import open_clip

    cfg = {**tinymodels.TINY_VIT, "text_cfg": {**tinymodels.TINY_VIT["text_cfg"], **text_extra}}
    torch.manual_seed(3)
    return open_clip.CLIP(**cfg).eval()


def _open_clip_has_eos_pool() -> bool:
    from open_clip.model import CLIPTextCfg

    return "eos_id" in CLIPTextCfg.__dataclass_fields__


@pytest.mark.skipif(not _open_clip_has_eos_pool(), reason="open_clip < 3.1 has no eos pool")
def test_trimmed_eos_pool_equals_full():
    module = _clip({"pool_type": "eos", "eos_id": 49407})
    assert trimmable_pool_type(module) == "eos"
    import open_clip

    tokens = open_clip.get_tokenizer("ViT-B-32")(MIXED)
    with torch.inference_mode():
        full = module.encode_text(tokens)
        trimmed = encode_text_trimmed(module, tokens, "eos")
    assert torch.allclose(full, trimmed, atol=1e-5)


def _pool_2x(x, text=None, pool_type="argmax"):
    """open_clip 2.x: returns (pooled, tokens)."""
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)], x


def _pool_30(x, text=None, pool_type="argmax"):
    """open_clip 3.0: returns pooled, takes no eos_token_id."""
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)]


@pytest.mark.parametrize("old_pool", [_pool_2x, _pool_30])
def test_trimmed_text_does_not_depend_on_text_global_pool(tiny, old_pool, monkeypatch):
    """`text_global_pool` changed signature and return type across open_clip releases; the
    trimmed path pools itself, so it gives the same vectors whichever is installed."""
    import open_clip.transformer

    want = tiny.encode_texts(MIXED)
    monkeypatch.setattr(open_clip.transformer, "text_global_pool", old_pool)
    np.testing.assert_array_equal(tiny.encode_texts(MIXED), want)
    assert np.abs(want - _full_padding(tiny, MIXED)).max() < 1e-5


@pytest.mark.parametrize("extra", [{"pool_type": "last"}, {"no_causal_mask": True},
                                   {"pool_type": "none"}])
def test_no_trimming_when_not_provably_identical(extra):
    assert trimmable_pool_type(_clip(extra)) is None


def test_custom_text_tower_is_not_trimmed():
    import open_clip

    torch.manual_seed(4)
    module = open_clip.CustomTextCLIP(**tinymodels.TINY_VIT).eval()
    assert trimmable_pool_type(module) is None


def test_int8_close_to_fp32_and_recorded(tiny, photos):
    m8 = clipsift.load(tiny.name, precision="int8")
    assert m8.precision == "int8" and m8.info.precision == "int8"
    assert tiny.info.precision == "fp32"
    images = [str(p) for p in photos[:8]]
    cos = (m8.encode_images(images) * tiny.encode_images(images)).sum(1)
    assert cos.min() >= 0.98
    assert m8.encode_images(images).dtype == np.float32
    # the text tower stays fp32 torch
    assert np.abs(m8.encode_texts(["a dog"]) - tiny.encode_texts(["a dog"])).max() < 1e-6


def test_fp32_onnx_matches_fp32(tiny, photos):
    mo = clipsift.load(tiny.name, precision="fp32-onnx")
    assert mo.info.precision == "fp32-onnx"
    assert mo.image_runner.path.name.endswith(".fp32-onnx.onnx")
    images = [str(p) for p in photos[:8]]
    diff = np.abs(mo.encode_images(images) - tiny.encode_images(images)).max()
    assert diff < 1e-5  # same numbers, other kernels


def test_int8_export_is_cached(tiny):
    first = clipsift.load(tiny.name, precision="int8").image_runner
    again = clipsift.load(tiny.name, precision="int8").image_runner
    assert first.path == again.path and again.path.is_file()


def test_bf16_runs_close_to_fp32(tiny, photos):
    mb = clipsift.load(tiny.name, precision="bf16")
    assert mb.info.precision == "bf16"
    images = [str(p) for p in photos[:4]]
    cos = (mb.encode_images(images) * tiny.encode_images(images)).sum(1)
    assert cos.min() >= 0.98
    t = (mb.encode_texts(["a red car"]) * tiny.encode_texts(["a red car"])).sum()
    assert t >= 0.98


def test_bad_precisions_fail_early():
    with pytest.raises(UsageError, match="fp32, fp32-onnx, bf16, fp16, int8"):
        check_precision("int4", "cpu")
    for cpu_only in ("int8", "fp32-onnx"):
        with pytest.raises(UsageError, match="CPU"):
            check_precision(cpu_only, "cuda")
    with pytest.raises(UsageError, match="CUDA"):
        check_precision("fp16", "cpu")
    with pytest.raises(UsageError, match="torch model"):
        apply_precision(clipsift.load("fake"), "int8")


def test_cli_precision(tiny, photos, tmp_path, capsys):
    import pyarrow.parquet as pq

    folder = tmp_path / "p"
    folder.mkdir()
    for p in photos[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "e.parquet"
    code = main(["embed", str(folder), "-m", tiny.name, "-o", str(out), "--precision", "int8",
                 "--workers", "0"])
    assert code == 0
    emb = np.stack(pq.read_table(out).column("embedding").to_pylist())
    ref = tiny.encode_images(sorted(str(p) for p in folder.iterdir()))
    assert (emb * ref).sum(1).min() >= 0.98
    assert main(["embed", str(folder), "-m", tiny.name, "-o", str(out), "--precision",
                 "int3"]) == 2
    assert "int3" in capsys.readouterr().err
