"""The `seer` command as a user runs it: a real subprocess."""

import subprocess
import sys

import tiny_models as tm
from seer import GenerationConfig, pipeline


def _seer(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "seer", *args], capture_output=True, text=True, timeout=timeout)


def test_check_env():
    out = _seer("check-env")
    assert out.returncode == 0, out.stderr
    for key in ("seer", "torch", "transformers", "cuda available", "native CPU kernels"):
        assert key in out.stdout


def test_run_with_an_image_prints_the_greedy_answer(tiny_llava, tmp_path):
    img = tm.make_image(5)
    path = tmp_path / "x.png"
    img.save(path)
    out = _seer("run", tiny_llava, "describe this", "--image", str(path), "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr
    with pipeline(tiny_llava) as pipe:
        want = pipe(("describe this", img), gen_config=GenerationConfig(max_new_tokens=12)).text
    assert out.stdout == want + "\n"
    assert "loaded" in out.stderr
    # the options between the model and the prompt, as `seer run MODEL --image X "prompt"`
    out = _seer("run", tiny_llava, "--image", str(path), "--max-new-tokens", "12", "describe this")
    assert out.returncode == 0, out.stderr
    assert out.stdout == want + "\n"


def test_run_reports_bad_input():
    out = _seer("run", "/no/such/model", "hi")
    assert out.returncode == 2 and "not a folder" in out.stderr


def test_serve_flags_parse_as_lmdeploy_spells_them():
    """`seer serve api_server MODEL ...` (lmdeploy's spelling) and every engine flag reach the configs."""
    import argparse

    from seer.cliargs import engine_configs
    from seer.serve import api_server

    ap = argparse.ArgumentParser()
    api_server.add_arguments(ap)
    defaults = ap.parse_args(["m"])
    assert (defaults.server_name, defaults.server_port) == ("0.0.0.0", 23333)
    args = ap.parse_args(["m", "--server-name", "127.0.0.1", "--server-port", "9000", "--api-keys", "a", "b",
                          "--limit-mm-per-prompt", "image=3", "--session-len", "300", "--max-batch-size", "5",
                          "--cache-max-entry-count", "0.5", "--block-size", "8", "--no-enable-prefix-caching",
                          "--max-prefill-token-num", "99", "--num-gpu-blocks", "40", "--dtype", "float32",
                          "--device", "cpu", "--vision-max-batch-size", "3", "--vision-tower-path", "/t",
                          "--min-pixels", "100", "--max-pixels", "2000", "--feature-cache-size", "7",
                          "--chat-template", "vicuna", "--quantization", "int4", "--kv-cache-dtype", "bf16"])
    assert args.api_keys == ["a", "b"] and api_server._limits(args.limit_mm_per_prompt) == {"image": 3}
    ecfg, vcfg, tcfg = engine_configs(args)
    assert (ecfg.session_len, ecfg.max_batch_size, ecfg.cache_max_entry_count, ecfg.block_size,
            ecfg.enable_prefix_caching, ecfg.max_prefill_token_num, ecfg.num_gpu_blocks, ecfg.dtype,
            ecfg.device, ecfg.quantization, ecfg.kv_cache_dtype) == (300, 5, 0.5, 8, False, 99, 40, "float32", "cpu",
                                                                     "int4", "bfloat16")
    assert (vcfg.max_batch_size, vcfg.vision_tower_path, vcfg.min_pixels, vcfg.max_pixels,
            vcfg.feature_cache_size) == (3, "/t", 100, 2000, 7)
    assert tcfg.model_name == "vicuna"


def test_serve_api_server_alias_reports_bad_options(tiny_llava):
    for argv in (["serve", "api_server", "/no/such/model"], ["serve", "/no/such/model"]):
        out = _seer(*argv)
        assert out.returncode == 2 and "not a folder" in out.stderr, out.stderr
    out = _seer("serve", "api_server", tiny_llava, "--min-pixels", "500", "--max-pixels", "100")
    assert out.returncode == 2 and "min_pixels" in out.stderr, out.stderr
