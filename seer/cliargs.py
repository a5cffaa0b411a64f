"""Options shared by the ``seer`` subcommands: which model, and how the engine runs it.

The flags mirror ``EngineConfig``, ``VisionConfig`` and ``ChatTemplateConfig`` with
LMDeploy's spelling (``--session-len``, ``--cache-max-entry-count``, ``--tp``...), so
``lmdeploy serve api_server ...`` command lines port by changing the program name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from .config import ChatTemplateConfig, EngineConfig, VisionConfig


def add_model_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("model", nargs="?", default=None,
                    help="a local model folder (Hugging Face layout); default: seer's bundled demo model")


def resolve_model(model: Optional[str]) -> str:
    """The model folder to load: the one given, else the bundled demo model (said on stderr)."""
    if model:
        return model
    try:
        from .assets import default_model_path

        path = default_model_path()
    except (ImportError, OSError) as e:
        raise ValueError(f"no model given, and seer's demo model cannot be used ({e}); pass a model folder") \
            from None
    print(f"[seer] no model given: using seer's demo model ({path})", file=sys.stderr)
    return path


def add_engine_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("engine")
    d = EngineConfig()
    g.add_argument("--session-len", type=int, default=None, help="max prompt + output tokens per request")
    g.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="max sequences per step")
    g.add_argument("--cache-max-entry-count", type=float, default=d.cache_max_entry_count,
                   help="share of free memory given to the KV cache")
    g.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV-cache block")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=d.enable_prefix_caching, help="reuse KV blocks of shared prefixes (images included)")
    g.add_argument("--max-prefill-token-num", type=int, default=d.max_prefill_token_num,
                   help="max tokens per step; longer prompts are prefilled in chunks")
    g.add_argument("--num-gpu-blocks", type=int, default=None, help="fix the KV pool size in blocks")
    g.add_argument("--dtype", default=d.dtype, choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--quantization", default=None, choices=("int8", "int4"),
                   help="quantise the decoder's weights at load (int8: a scale per output row; int4: a scale per "
                        "32 weights); on CPU the kernels multiply in integers")
    g.add_argument("--kv-cache-dtype", default=d.kv_cache_dtype, choices=("auto", "bfloat16", "bf16"),
                   help="what the KV cache stores: the model's dtype (auto) or bfloat16 (half fp32's bytes)")
    g.add_argument("--device", default=None, help="cpu or cuda[:N]; default: cuda when available")
    g.add_argument("--tp", "--tensor-parallel-size", dest="tp", type=int, default=1,
                   help="tensor-parallel ranks, one process each (default 1)")
    g.add_argument("--distributed-executor-backend", default=d.distributed_executor_backend, choices=("mp", "ray"),
                   help="with --tp > 1: ranks as local processes (mp) or as actors of a Ray cluster (ray)")
    g.add_argument("--vision-max-batch-size", type=int, default=VisionConfig().max_batch_size,
                   help="images per vision-encoder forward")
    g.add_argument("--vision-tower-path", default=None,
                   help="original-layout LLaVA: the CLIP folder its mm_vision_tower names")
    g.add_argument("--min-pixels", type=int, default=None,
                   help="Qwen2-VL family: fewest pixels an image is resized to (default: the checkpoint's)")
    g.add_argument("--max-pixels", type=int, default=None,
                   help="Qwen2-VL family: most pixels an image is resized to (default: the checkpoint's)")
    g.add_argument("--feature-cache-size", type=int, default=VisionConfig().feature_cache_size,
                   help="images whose vision features stay cached (by content hash)")
    g.add_argument("--chat-template", default=None,
                   help="a built-in template name, or a JSON file of ChatTemplateConfig fields")


def engine_configs(args) -> tuple[EngineConfig, VisionConfig, Optional[ChatTemplateConfig]]:
    """The three configs the flags describe (``ValueError`` on a bad value)."""
    ecfg = EngineConfig(session_len=args.session_len, max_batch_size=args.max_batch_size,
                        cache_max_entry_count=args.cache_max_entry_count, block_size=args.block_size,
                        enable_prefix_caching=args.enable_prefix_caching,
                        max_prefill_token_num=args.max_prefill_token_num, num_gpu_blocks=args.num_gpu_blocks,
                        dtype=args.dtype, device=args.device, tp=args.tp, quantization=args.quantization,
                        kv_cache_dtype=args.kv_cache_dtype,
                        distributed_executor_backend=args.distributed_executor_backend,
                        max_queued_requests=getattr(args, "max_queued_requests", None))
    vcfg = VisionConfig(max_batch_size=args.vision_max_batch_size, vision_tower_path=args.vision_tower_path,
                        min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                        feature_cache_size=args.feature_cache_size)
    return ecfg, vcfg, chat_template_config(args.chat_template)


def chat_template_config(spec: Optional[str]) -> Optional[ChatTemplateConfig]:
    if not spec:
        return None
    if os.path.isfile(spec):
        try:
            with open(spec) as f:
                fields = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--chat-template {spec}: not a readable JSON file ({e})") from None
        if not isinstance(fields, dict):
            raise ValueError(f"--chat-template {spec}: expected a JSON object of ChatTemplateConfig fields")
        try:
            return ChatTemplateConfig(**fields)
        except TypeError as e:
            raise ValueError(f"--chat-template {spec}: {e}") from None
    return ChatTemplateConfig(model_name=spec)
