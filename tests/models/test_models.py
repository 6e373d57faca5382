"""Model loading through public names, in every checkpoint format, with parity checks."""

from __future__ import annotations

import os
import pickle
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import clipsift
from clipsift.errors import CheckpointError, ModelNotAvailable, UnknownModel


def _reference_openclip(arch_cfg: dict, path) -> torch.nn.Module:
    """The reference: open_clip's own factory loading the same file."""
    import open_clip

    model = open_clip.CLIP(**arch_cfg).eval()
    open_clip.load_checkpoint(model, str(path))
    return model


@pytest.mark.parametrize("fmt", ["state_dict", "wrapped", "safetensors", "torchscript",
                                 "openai_sd"])
def test_openclip_formats_load_with_parity(tiny_vit, photos, fmt):
    from tests.support.tinymodels import TINY_VIT

    m = clipsift.load(f"TinyViT-quickgelu:{tiny_vit[fmt]}")
    assert (m.dim, m.image_size, m.context_length) == (32, 32, 77)
    assert m.logit_scale == pytest.approx(50.0, rel=1e-5)
    ref = _reference_openclip({**TINY_VIT, "quick_gelu": True}, tiny_vit["state_dict"])
    img = Image.open(photos[0]).convert("RGB")
    import open_clip

    ref_pre = open_clip.image_transform(32, is_train=False)
    assert torch.equal(m.preprocess(img), ref_pre(img))
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(ref.encode_image(ref_pre(img)[None]), dim=-1)
        tok = open_clip.get_tokenizer("ViT-B-32")(["a photo of a dog"])
        ref_txt = torch.nn.functional.normalize(ref.encode_text(tok), dim=-1)
    got_img = m.encode_images([img])
    got_txt = m.encode_texts(["a photo of a dog"])
    assert got_img.dtype == np.float32 and got_txt.dtype == np.float32
    np.testing.assert_allclose(got_img, ref_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_txt, ref_txt.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_img, axis=1), 1.0, atol=1e-5)


def test_torchscript_archive_forces_quickgelu(tiny_vit):
    """OpenAI archives hold QuickGELU weights: loading them as plain GELU would be wrong."""
    m = clipsift.load(f"TinyViT:{tiny_vit['torchscript']}")
    assert m.model_cfg["quick_gelu"] is True


def test_resnet_openai_archive(tiny_rn, photos):
    m = clipsift.load(f"TinyRN:{tiny_rn['torchscript']}")
    ref = torch.jit.load(str(tiny_rn["torchscript"])).eval()
    img = Image.open(photos[1]).convert("RGB")
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref.encode_image(m.preprocess(img)[None]), dim=-1)
    np.testing.assert_allclose(m.encode_images([img]), want.numpy(), atol=1e-5)


def test_hf_clip_parity(hf_clip_dir, photos):
    from transformers import CLIPModel, CLIPProcessor

    m = clipsift.load(f"hf:{hf_clip_dir}")
    assert (m.dim, m.image_size, m.context_length) == (24, 30, 77)
    ref = CLIPModel.from_pretrained(hf_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(hf_clip_dir)
    img = Image.open(photos[2]).convert("RGB")
    inputs = proc(text=["a dog", "a photo of a cat on grass"], images=img, return_tensors="pt",
                  padding=True)
    with torch.no_grad():
        out = ref(**inputs)
    np.testing.assert_allclose(m.encode_images([img]), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(m.encode_texts(["a dog", "a photo of a cat on grass"]),
                               out.text_embeds.numpy(), atol=1e-5)
    assert torch.equal(m.preprocess(img), inputs["pixel_values"][0])


def test_hf_chinese_clip_parity(hf_cn_clip_dir, photos):
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    m = clipsift.load(f"hf:{hf_cn_clip_dir}")
    ref = ChineseCLIPModel.from_pretrained(hf_cn_clip_dir).eval()
    proc = ChineseCLIPProcessor.from_pretrained(hf_cn_clip_dir)
    texts = ["一只猫的照片", "草地上的狗"]
    img = Image.open(photos[3]).convert("RGB")
    inputs = proc(text=texts, images=img, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = ref(**inputs)
    np.testing.assert_allclose(m.encode_texts(texts), out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(m.encode_images([img]), out.image_embeds.numpy(), atol=1e-5)


def test_long_text_is_chunked_not_truncated(tiny_vit):
    m = clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")
    poem = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)  # ~270 tokens
    pieces = m.split_tokens(poem, m.context_length - 2)
    assert len(pieces) >= 4 and " ".join(pieces) == poem
    assert all(m.count_tokens(p) <= m.context_length - 2 for p in pieces)
    want = m.encode_texts(pieces).mean(axis=0)
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(m.encode_texts([poem])[0], want, atol=1e-5)
    # the tail matters: changing only the last words changes the embedding
    other = m.encode_texts([poem + " zebra elephant giraffe"])[0]
    assert not np.allclose(other, m.encode_texts([poem])[0], atol=1e-4)


def test_chinese_long_text_chunked(hf_cn_clip_dir):
    m = clipsift.load(f"hf:{hf_cn_clip_dir}")
    text = "一只猫的照片在草地上跑" * 20  # no spaces, > 62 tokens
    pieces = m.split_tokens(text, m.context_length - 2)
    assert "".join(pieces) == text and len(pieces) > 1
    assert m.encode_texts([text]).shape == (1, m.dim)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/clipsift-pwned",))


def test_malicious_pickle_is_refused(tmp_path, arch_configs):
    if os.path.exists("/tmp/clipsift-pwned"):
        os.remove("/tmp/clipsift-pwned")
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Evil()}}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        clipsift.load(f"TinyViT:{evil}")
    raw = tmp_path / "evil2.bin"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        clipsift.load(f"TinyViT:{raw}")
    assert not os.path.exists("/tmp/clipsift-pwned")


def test_malicious_torchscript_archive_is_refused(tmp_path, tiny_vit):
    src = zipfile.ZipFile(tiny_vit["torchscript"])
    evil = tmp_path / "evil-jit.pt"
    with zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl") and name.count("/") == 1:
                data = pickle.dumps(_Evil(), protocol=2)
            dst.writestr(name, data)
    with pytest.raises(CheckpointError, match="not allowed"):
        clipsift.load(f"TinyViT:{evil}")
    assert not os.path.exists("/tmp/clipsift-pwned")


def test_wrong_architecture_is_a_clear_error(tiny_vit, tiny_rn):
    with pytest.raises(CheckpointError, match="does not fit"):
        clipsift.load(f"TinyViT:{tiny_rn['state_dict']}")


def test_unknown_names(arch_configs):
    with pytest.raises(UnknownModel, match="ViT-B-32"):
        clipsift.load("ViT-B-33:openai")
    with pytest.raises(UnknownModel, match="known tags"):
        clipsift.load("ViT-B-32:nonexistent_tag")
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        clipsift.load("ViT-B-32:/nowhere/model.pt")


def test_offline_model_fails_fast_with_fixes(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPSIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ["ViT-B-32:laion2b_s34b_b79k", "RN50:openai", "hf:openai/clip-vit-base-patch32"]:
        start = time.monotonic()
        with pytest.raises(ModelNotAvailable) as info:
            clipsift.load(name)
        assert time.monotonic() - start < 15
        msg = str(info.value)
        assert name in msg and "Looked in" in msg and "--model mini" in msg
        assert "CLIPSIFT_CACHE" in msg


def test_fake_model_is_deterministic():
    m = clipsift.load("fake")
    a = m.encode_texts(["a red car"])
    assert np.array_equal(a, clipsift.load("fake").encode_texts(["a red car"]))
    assert a.shape == (1, 64)
