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
