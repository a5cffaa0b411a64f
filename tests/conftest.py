"""Shared pytest setup: offline transformers, 2 torch threads, tiny random checkpoints.

Each ``tiny_*`` fixture builds its checkpoint once per session (about 0.3 s each) under a
``tmp_path_factory`` folder and returns its path (``tiny_internlm2``: ``(internlm2_path,
llama_ref_path)``). Builders and reference helpers live in ``tests/tiny_models.py``.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# SEER_TEST_DTYPE=float32 on a CUDA machine: seer runs on the GPU in fp32 (not bf16), so the
# greedy-parity tests still compare against transformers' fp32 forward on the CPU.
if os.environ.get("SEER_TEST_DTYPE"):
    import seer.models.base as _base

    _resolve = _base.resolve_device

    def _test_resolve(cfg):
        device, dtype = _resolve(cfg)
        return device, (_base._DTYPES[os.environ["SEER_TEST_DTYPE"]] if cfg.dtype == "auto" else dtype)

    _base.resolve_device = _test_resolve
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

try:  # "Writing model shards" / "Loading weights" bars
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return tiny_models.build_text_model(str(tmp_path_factory.mktemp("tiny") / "llama"), "llama")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory):
    return tiny_models.build_text_model(str(tmp_path_factory.mktemp("tiny") / "mistral"), "mistral")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    return tiny_models.build_text_model(str(tmp_path_factory.mktemp("tiny") / "qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    return tiny_models.build_text_model(str(tmp_path_factory.mktemp("tiny") / "qwen3"), "qwen3")


@pytest.fixture(scope="session")
def tiny_internlm2(tmp_path_factory):
    """``(internlm2_path, llama_ref_path)``: published InternLM2 layout + transformers twin."""
    return tiny_models.build_internlm2(str(tmp_path_factory.mktemp("tiny") / "internlm2"))


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    return tiny_models.build_llava(str(tmp_path_factory.mktemp("tiny") / "llava"), lm="llama")


@pytest.fixture(scope="session")
def tiny_llava_mistral(tmp_path_factory):
    return tiny_models.build_llava(str(tmp_path_factory.mktemp("tiny") / "llava_mistral"), lm="mistral")


@pytest.fixture(scope="module")
def text_pipe(tiny_llama):
    """A pipeline over the tiny Llama, shared by the tests of one module."""
    from seer import pipeline

    with pipeline(tiny_llama) as pipe:
        yield pipe


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory):
    return tiny_models.build_llava_next(str(tmp_path_factory.mktemp("tiny") / "llava_next"))
