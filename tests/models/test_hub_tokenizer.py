"""`hf-hub:` open_clip models (and local folders laid out like one) use the tokenizer their
config names in `text_cfg.hf_tokenizer_name`, not CLIP's BPE, with parity to open_clip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import clipsift
from clipsift.errors import ModelNotAvailable

TEXTS = ["a photo of a dog", "the red car is on the road", "cat"]
WORDS = ["a", "an", "the", "of", "on", "in", "is", "photo", "picture", "dog", "cat", "red",
         "car", "road", "street", "blue", "sky"]


def _tokenizer_folder(folder: Path) -> Path:
    """A tiny BERT-style WordPiece tokenizer written offline (ids nothing like CLIP BPE's)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=16).save_pretrained(folder)
    return folder


def _hub_folder(folder: Path, tokenizer_name: str) -> Path:
    """An open_clip hub repo's files: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    from tests.support.tinymodels import TINY_VIT

    model_cfg = {**TINY_VIT, "text_cfg": {
        "context_length": 16, "vocab_size": 5 + len(WORDS), "width": 32, "heads": 2,
        "layers": 2, "hf_tokenizer_name": tokenizer_name}}
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(11)
    model = open_clip.CLIP(**model_cfg).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return folder


def _reference(model_dir: Path, tokenizer_dir: Path) -> np.ndarray:
    """open_clip's own model from the folder's config and weights, with the HF tokenizer the
    config names (open_clip's `local-dir:` would look for the tokenizer in the folder)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    cfg = json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.CLIP(**cfg).eval()
    open_clip.load_checkpoint(model, str(model_dir / "open_clip_model.safetensors"))
    tokens = HFTokenizer(str(tokenizer_dir), context_length=16)(TEXTS)
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    tok = _tokenizer_folder(root / "tokenizer")
    return _hub_folder(root / "model", str(tok)), tok


@pytest.fixture(scope="module")
def reference_runs(local_hub):
    """open_clip's HFTokenizer works with the installed transformers (open_clip < 3.3 does
    not with transformers 5: see the last test)."""
    from open_clip.tokenizer import HFTokenizer

    try:
        HFTokenizer(str(local_hub[1]), context_length=16)(["a"])
    except AttributeError as ex:
        pytest.skip(f"open_clip's HFTokenizer cannot run here: {ex}")


def test_local_hub_folder_uses_the_named_tokenizer(local_hub, reference_runs):
    model_dir, tok = local_hub
    want = _reference(model_dir, tok)
    for name in (f"hf-hub:{model_dir}", str(model_dir)):
        m = clipsift.load(name)
        assert m.context_length == 16
        assert m.count_tokens("a photo of a dog") == 5  # WordPiece words, not CLIP BPE
        np.testing.assert_allclose(m.encode_texts(TEXTS), want, atol=1e-5)


def _cache_repo(cache: Path, repo_id: str, files: Path) -> None:
    """Lay `files` out as a Hugging Face hub cache entry of `repo_id` (offline)."""
    commit = "0" * 40
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(files, entry / "snapshots" / commit)


def _use_hf_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at `cache` (it reads HF_HUB_CACHE once, at import)."""
    import sys

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name, module in list(sys.modules.items()):
        if name.startswith("huggingface_hub") and hasattr(module, "HF_HUB_CACHE"):
            monkeypatch.setattr(module, "HF_HUB_CACHE", str(cache))


def test_hub_repo_from_the_cache_uses_its_hub_tokenizer(tmp_path, monkeypatch, reference_runs):
    """`hf-hub:ORG/NAME` whose config names another hub repo as tokenizer, both cached."""
    tok = _tokenizer_folder(tmp_path / "tok")
    model_dir = _hub_folder(tmp_path / "model", "someorg/tiny-wordpiece")
    cache = tmp_path / "hf-cache"
    _cache_repo(cache, "someorg/tiny-clip", model_dir)
    _cache_repo(cache, "someorg/tiny-wordpiece", tok)
    _use_hf_cache(monkeypatch, cache)
    monkeypatch.setenv("CLIPSIFT_OFFLINE", "1")
    m = clipsift.load("hf-hub:someorg/tiny-clip")
    np.testing.assert_allclose(m.encode_texts(TEXTS), _reference(model_dir, tok), atol=1e-5)
    shutil.rmtree(cache / "models--someorg--tiny-wordpiece")
    with pytest.raises(ModelNotAvailable, match="someorg/tiny-wordpiece"):
        clipsift.load("hf-hub:someorg/tiny-clip")


def test_missing_local_tokenizer_is_model_not_available(tmp_path):
    model_dir = _hub_folder(tmp_path / "model", str(tmp_path / "no-such-tokenizer"))
    with pytest.raises(ModelNotAvailable, match="no-such-tokenizer"):
        clipsift.load(f"hf-hub:{model_dir}")


def test_old_open_clip_with_new_transformers_is_a_clear_error(local_hub, monkeypatch):
    """open_clip < 3.3's HFTokenizer calls `batch_encode_plus`, gone in transformers 5."""
    from open_clip.tokenizer import HFTokenizer

    from clipsift.errors import UsageError

    def old_call(self, texts, context_length=None):
        return self.tokenizer.batch_encode_plus_removed(texts)

    monkeypatch.setattr(HFTokenizer, "__call__", old_call)
    with pytest.raises(UsageError, match=r"upgrade open_clip_torch to 3\.3"):
        clipsift.load(f"hf-hub:{local_hub[0]}")
