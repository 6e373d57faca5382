"""OpenAI weights load with QuickGELU, as they were trained, in both of OpenAI's forms (the
TorchScript archive and its plain state dict), with parity to open_clip's own OpenAI loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import clipsift
from clipsift.models.checkpoints import read_checkpoint
from tests.support import tinymodels

TEXTS = ["a photo of a dog", "a red car on the street"]


@pytest.fixture(scope="module")
def openai_files(arch_configs, tmp_path_factory):
    return tinymodels.save_openai_formats(tmp_path_factory.mktemp("openai"))


def _reference(path, img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's `load_openai_model` (what `ViT-B-32:openai` means there), unit rows."""
    import open_clip

    ref = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    pre = open_clip.image_transform(ref.visual.image_size, is_train=False)
    with torch.no_grad():
        image = torch.nn.functional.normalize(ref.encode_image(pre(img)[None]), dim=-1)
        text = torch.nn.functional.normalize(ref.encode_text(open_clip.tokenize(TEXTS)), dim=-1)
    return image.numpy(), text.numpy()


def test_openai_forms_are_recognised(openai_files):
    for fmt in ("torchscript", "openai_sd"):
        ckpt = read_checkpoint(openai_files[fmt])
        assert ckpt.openai and ckpt.quick_gelu is True, fmt
        assert "input_resolution" not in ckpt.state_dict


@pytest.mark.parametrize("arch", ["TinyOpenAI", "TinyOpenAI-quickgelu"])
def test_both_openai_forms_match_open_clip_reference(openai_files, photos, arch):
    img = Image.open(photos[5]).convert("RGB")
    # open_clip's loader takes the plain state dict; our archive (scripted from open_clip,
    # unlike OpenAI's traced ones) also stores attn_mask, which that loader refuses
    ref_img, ref_txt = _reference(openai_files["openai_sd"], img)
    got = {}
    for fmt in ("torchscript", "openai_sd"):
        m = clipsift.load(f"{arch}:{openai_files[fmt]}")
        assert m.model_cfg["quick_gelu"] is True
        got[fmt] = (m.encode_images([img]), m.encode_texts(TEXTS))
        np.testing.assert_allclose(got[fmt][0], ref_img, atol=1e-5)
        np.testing.assert_allclose(got[fmt][1], ref_txt, atol=1e-5)
    for a, b in zip(got["torchscript"], got["openai_sd"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_gelu_would_give_other_vectors(openai_files):
    """The check above means something: the same weights as plain GELU differ clearly."""
    import open_clip

    gelu = open_clip.CLIP(**tinymodels.TINY_OPENAI).eval()
    gelu.load_state_dict(read_checkpoint(openai_files["openai_sd"]).state_dict)
    with torch.no_grad():
        wrong = torch.nn.functional.normalize(gelu.encode_text(open_clip.tokenize(TEXTS)), dim=-1)
    right = clipsift.load(f"TinyOpenAI:{openai_files['openai_sd']}").encode_texts(TEXTS)
    assert np.abs(wrong.numpy() - right).max() > 1e-3


def test_scripted_gelu_model_keeps_gelu(arch_configs, photos, tmp_path):
    """A TorchScript archive says which activation its modules use: a GELU model saved with
    torch.jit is not forced to QuickGELU."""
    import open_clip

    model = tinymodels.make_openclip(tinymodels.TINY_VIT, seed=3)  # GELU
    path = tmp_path / "gelu-jit.pt"
    torch.jit.script(model).save(str(path))
    assert read_checkpoint(path).quick_gelu is False
    m = clipsift.load(f"TinyViT-quickgelu:{path}")
    assert m.model_cfg["quick_gelu"] is False
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(open_clip.tokenize(TEXTS)), dim=-1)
    np.testing.assert_allclose(m.encode_texts(TEXTS), want.numpy(), atol=1e-5)
