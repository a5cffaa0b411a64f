"""Vision-encoder throughput: a CLIP-L-shaped tower at 336 px (random weights), batch 8.

seer's LLaVA path (``family.model.encode_images``: the tower, the feature layer, the projector)
against transformers' ``LlavaForConditionalGeneration.get_image_features`` on the same
checkpoint and the same pixels, fp32, 2 threads, in one process, alternating, best of
``--repeats``; images/s, and the largest difference between the two outputs.

The checkpoint (``.bench/llava-clip-l``): CLIP ViT-L/14 at 336 px (24 layers, hidden 1024,
16 heads, MLP 4096: 577 tokens an image) under the tests' tiny Llama, built once offline.

    python benchmarks/vision_encoder.py --write    # the "vision" section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE, os.path.join(REPO, "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = os.path.join(REPO, ".bench", "llava-clip-l")
CLIP_L = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
              num_attention_heads=16, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def build(path: str = MODEL) -> str:
    if os.path.isfile(os.path.join(path, "bench_build.json")):
        return path
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    import tiny_models as tm

    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tm.build_llava(tmp)  # tokenizer, processor and a tiny Llama; the tower is replaced
    cfg = LlavaConfig.from_pretrained(tmp)
    cfg.vision_config = CLIPVisionConfig(**CLIP_L)
    cfg.image_seq_length = (CLIP_L["image_size"] // CLIP_L["patch_size"]) ** 2
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(tmp, safe_serialization=True)
    with open(os.path.join(tmp, "bench_build.json"), "w") as f:
        json.dump({"vision": CLIP_L, "params": sum(p.numel() for p in model.parameters())}, f, indent=2)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args(argv)

    import torch
    from transformers import LlavaForConditionalGeneration

    import seer

    torch.set_num_threads(2)
    path = build()
    side = CLIP_L["image_size"]
    pixels = torch.randn(args.batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    hf = LlavaForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32).eval()
    pipe = seer.pipeline(path)
    model = pipe.family.model

    def run_hf():
        out = hf.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                          vision_feature_select_strategy="default")
        return getattr(out, "pooler_output", out)  # transformers 5 wraps the features

    def run_seer():
        return torch.stack(model.encode_images(list(pixels)))

    best = {"transformers": float("inf"), "seer": float("inf")}
    outs = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in (("transformers", run_hf), ("seer", run_seer)):
                t = time.perf_counter()
                out = fn()
                best[name] = min(best[name], time.perf_counter() - t)
                outs[name] = out if not isinstance(out, (list, tuple)) else torch.cat(list(out))
    pipe.close()
    want = outs["transformers"].reshape(outs["seer"].shape)
    diff = float((outs["seer"] - want).abs().max())
    rate = {k: args.batch / v for k, v in best.items()}
    lines = [
        f"Command: `python benchmarks/vision_encoder.py --write` (CLIP ViT-L/14 at 336 px, random weights, "
        f"{args.batch} images a batch, fp32, 2 threads, alternating, best of {args.repeats}; "
        f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}).",
        "",
        "| engine | seconds a batch | images/s |",
        "|---|---|---|",
        *[f"| {k} | {best[k]:.2f} | {rate[k]:.2f} |" for k in ("transformers", "seer")],
        "",
        f"seer / transformers: {rate['seer'] / rate['transformers']:.2f}x; largest difference between the "
        f"two outputs {diff:.2e}.",
    ]
    print("\n".join(lines))
    if args.write:
        from offline import write_section

        write_section(os.path.join(REPO, "BENCHMARKS.md"), "vision", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
