"""Build tiny random-weight CLIP-family models of the real architectures and save them in
every checkpoint format clipsift accepts. Used by tests and benchmarks; no network."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CLIP_BPE = SHARED / "clip-bpe"

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    "quick_gelu": True,
}
# OpenAI's shape rules (64-wide heads), so open_clip's `build_model_from_openai_state_dict`
# rebuilds exactly this model from its weights; no quick_gelu, like open_clip's ViT-B-32.json.
TINY_OPENAI = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def write_arch_configs(folder: Path) -> Path:
    """Write tiny open_clip architecture JSONs (TinyViT, TinyViT-quickgelu, TinyRN)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "TinyViT.json").write_text(json.dumps(TINY_VIT))
    (folder / "TinyViT-quickgelu.json").write_text(json.dumps({**TINY_VIT, "quick_gelu": True}))
    (folder / "TinyRN.json").write_text(json.dumps(TINY_RN))
    (folder / "TinyOpenAI.json").write_text(json.dumps(TINY_OPENAI))
    (folder / "TinyOpenAI-quickgelu.json").write_text(json.dumps({**TINY_OPENAI,
                                                                 "quick_gelu": True}))
    return folder


def make_openclip(cfg: dict, seed: int = 0) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():  # make text projection and logit scale non-trivial
        model.logit_scale.fill_(torch.log(torch.tensor(50.0)))
    return model


def save_openclip_formats(model: torch.nn.Module, folder: Path, stem: str) -> dict[str, Path]:
    """open_clip state dict (.pt, also wrapped in {'state_dict', module.}), safetensors,
    OpenAI TorchScript archive, OpenAI plain state dict."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    out = {
        "state_dict": folder / f"{stem}.pt",
        "wrapped": folder / f"{stem}-wrapped.pth",
        "safetensors": folder / f"{stem}.safetensors",
        "torchscript": folder / f"{stem}-openai-jit.pt",
        "openai_sd": folder / f"{stem}-openai-sd.bin",
    }
    torch.save(sd, out["state_dict"])
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               out["wrapped"])
    save_file({k: v.clone() for k, v in sd.items()}, str(out["safetensors"]))
    torch.jit.script(model).save(str(out["torchscript"]))
    torch.save({**sd, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, out["openai_sd"])
    return out


def save_openai_formats(folder: Path, seed: int = 5) -> dict[str, Path]:
    """A TinyOpenAI QuickGELU model as OpenAI releases weights: half-precision linear and
    conv weights (OpenAI's `convert_weights`), saved as a TorchScript archive and as that
    archive's plain state dict (with OpenAI's input_resolution/context_length/vocab_size)."""
    from open_clip.model import convert_weights_to_lp

    folder.mkdir(parents=True, exist_ok=True)
    model = make_openclip({**TINY_OPENAI, "quick_gelu": True}, seed=seed)
    convert_weights_to_lp(model, torch.float16)
    out = {"torchscript": folder / "tinyopenai-jit.pt", "openai_sd": folder / "tinyopenai-sd.pt"}
    torch.jit.script(model).save(str(out["torchscript"]))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({**sd, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, out["openai_sd"])
    return out


def make_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel folder with the real CLIP BPE tokenizer."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    torch.manual_seed(seed)
    cfg = CLIPConfig(  # sub-configs as dicts: what transformers 4.x and 5.x both accept
        text_config=CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=77,
                                   vocab_size=49408, projection_dim=24).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=30, patch_size=2,
                                       projection_dim=24).to_dict(),
        projection_dim=24,
    )
    CLIPModel(cfg).eval().save_pretrained(folder)
    CLIPTokenizer(str(CLIP_BPE / "vocab.json"), str(CLIP_BPE / "merges.txt")).save_pretrained(
        folder)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
                       ).save_pretrained(folder)
    return folder


CN_WORDS = "一只猫狗的照片在草地上跑一张红色蓝色汽车飞机船鸟马青蛙鹿卡车图片"


def make_hf_chinese_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers ChineseCLIPModel folder with a small BERT vocab we write."""
    from transformers import (
        BertTokenizer,
        ChineseCLIPConfig,
        ChineseCLIPImageProcessor,
        ChineseCLIPModel,
        ChineseCLIPTextConfig,
        ChineseCLIPVisionConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted(set(CN_WORDS)) + list("abcdefghijklmnopqrstuvwxyz0123456789.,")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    cfg = ChineseCLIPConfig(
        text_config=ChineseCLIPTextConfig(vocab_size=len(vocab), hidden_size=32,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=37, max_position_embeddings=64
                                          ).to_dict(),
        vision_config=ChineseCLIPVisionConfig(hidden_size=32, intermediate_size=37,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              image_size=30, patch_size=2, projection_dim=24
                                              ).to_dict(),
        projection_dim=24,
    )
    ChineseCLIPModel(cfg).eval().save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    square = {"height": 30, "width": 30}  # the layout transformers 4.x and 5.x both read
    ChineseCLIPImageProcessor(size=square, crop_size=square).save_pretrained(folder)
    return folder


def save_named_folder(dest: Path, seed: int, name: str = "mymodel", **preprocess) -> Path:
    """A clipsift model folder called `name` with TinyViT weights drawn from `seed`: two
    seeds give two different models with the same name (a retrained model)."""
    from clipsift.models.folder import FolderConfig, PreprocessConfig, save_model_folder

    module = make_openclip(TINY_VIT, seed=seed)
    cfg = FolderConfig(name=name, model_cfg=dict(TINY_VIT),
                       preprocess=PreprocessConfig(image_size=32, **preprocess))
    return save_model_folder(module, cfg, dest)
