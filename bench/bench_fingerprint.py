"""What a model fingerprint costs (`ClipModel.fingerprint`: weights + preprocessing +
tokenizer + precision class), the first time and when cached by checkpoint file.

    .venv/bin/python bench/bench_fingerprint.py      # ViT-B-32 (random weights) and mini

The first computation hashes every tensor of the state dict (blake2b) and the tokenizer's
vocabulary; the weights digest is then cached under $CLIPSIFT_CACHE/fingerprints.json keyed
by the checkpoint file's (path, size, mtime, inode), so later loads pay only the tokenizer
digest. Commands that store no vectors (classify, similarity) never compute it. A fresh
temporary CLIPSIFT_CACHE is used, so the "first" numbers are really uncached.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, load_avg, machine_info, markdown_table, vit_b32_weights, write_json


def measure(name: str, reps: int) -> dict[str, Any]:
    """Load `name`, time its fingerprint uncached, then cached (best of `reps` new loads)."""
    import clipsift
    from clipsift.models.fingerprint import state_dict_digest, tokenizer_digest

    t0 = time.perf_counter()
    model = clipsift.load(name)
    load_s = time.perf_counter() - t0
    params = sum(t.numel() * t.element_size() for t in model.module.state_dict().values())
    t0 = time.perf_counter()
    first = model.fingerprint
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state_dict_digest(model.module, {})
    weights_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokenizer_digest(model.tokenizer, model.context_length)
    tokenizer_s = time.perf_counter() - t0
    cached = []
    for _ in range(reps):
        again = clipsift.load(name)
        t0 = time.perf_counter()
        assert again.fingerprint == first
        cached.append(time.perf_counter() - t0)
    return {"model": name, "weights_mb": round(params / 2**20, 1), "load_s": round(load_s, 3),
            "first_s": round(first_s, 3), "weights_digest_s": round(weights_s, 3),
            "tokenizer_digest_s": round(tokenizer_s, 3), "cached_s": round(min(cached), 3),
            "fingerprint": first.short}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fingerprint.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipsift-bench-fp-") as tmp:
        os.environ["CLIPSIFT_CACHE"] = str(Path(tmp) / "cache")
        before = load_avg()
        vit = f"ViT-B-32:{vit_b32_weights(Path(tmp))}"
        rows = [measure(vit, args.reps), measure("mini", args.reps)]
        rows[0]["model"] = "ViT-B-32 (random weights, .pt state dict)"
    result = {"machine": machine_info(), "load": {"before": before, "after": load_avg()},
              "command": "python bench/bench_fingerprint.py", "results": rows}
    write_json(Path(args.out), result)
    headers = ["model", "weights MB", "load s", "fingerprint s (first)", "of which weights s",
               "tokenizer s", "fingerprint s (cached)"]
    print(markdown_table(headers, [[r["model"], r["weights_mb"], r["load_s"], r["first_s"],
                                     r["weights_digest_s"], r["tokenizer_digest_s"],
                                     r["cached_s"]] for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
