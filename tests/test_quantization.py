"""Quantised weights (``EngineConfig(quantization="int8" | "int4")``): the decoder's linear
layers and the LM head hold int8 weights with a scale per output row, or 4-bit weights with a
scale per 32; the native kernels' answers equal the dequantised weights' times the input rounded
to int8 per row, and a row's answer never depends on the other rows; the trained demo
model answers held-out questions as well as in fp32 (int8 within 1 point, int4 within 3); on a
random tiny Llama the teacher-forced logits stay close to fp32's; a batch gives every request
what it gets alone, cached, chunked and preempted; a VLM quantises its decoder and keeps its
vision tower."""

import os
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from seer import LLM, EngineConfig, GenerationConfig, SamplingParams, kernels, pipeline
from seer.assets import default_model_path
from seer.layers.linear import Linear
from seer.layers.quant import Int4Linear, Int8Linear, _quantised, _QuantLinear

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import scenes  # noqa: E402

MODES = ["int8", "int4"]

GEN = GenerationConfig(max_new_tokens=32, ignore_eos=True)


def _int8_rows_of(x):
    """What the kernels multiply: each row of ``x`` rounded to int8 with its own scale, max|row| / 127."""
    peak = x.abs().amax(dim=1, keepdim=True)
    return torch.round(x * torch.where(peak > 0, 127.0 / peak, 0.0)) * (peak / 127)


@pytest.mark.parametrize("m", [1, 3, 4, 5, 9, 17, 300])
@pytest.mark.parametrize("cls,shape", [(Int8Linear, (96, 64)), (Int8Linear, (70, 38)), (Int8Linear, (70, 200)),
                                       (Int4Linear, (96, 64)), (Int4Linear, (70, 160))])  # N, K past whole tiles
def test_quantised_linear_equals_the_dequantised_weight(m, shape, cls):
    torch.manual_seed(m)
    n, k = shape
    lin = Linear(k, n, bias=True)
    q = cls(lin)
    assert q.qweight.dtype == torch.uint8
    rows = -(-n // 32) * 32  # whole blocks of 32 rows
    w = q.dequantized()
    if cls is Int8Linear:
        assert q.qweight.shape == (rows, -(-k // 4) * 4) and q.scales.shape == (rows,)
        bound = (w.abs().amax(dim=1, keepdim=True) / 127) / 2  # round to nearest
    else:
        assert q.qweight.shape == (rows, k // 2) and q.scales.shape == (rows, k // 32)
        # as q4_0: the peak sits at -8, so a weight of the other sign near it clips at +7: one step
        # (and a little more: the step is stored in fp16, up to 2^-11 of it off)
        assert q.scales.dtype == torch.float16
        bound = (w.reshape(n, -1, 32).abs().amax(dim=2) / 8 * (1 + 2 ** -8)).repeat_interleave(32, dim=1)
    assert ((w - lin.weight).abs() <= bound + 1e-6).all()
    x = torch.randn(m, k)
    got = q(x)
    want = F.linear(_int8_rows_of(x).double(), q.dequantized().double(), lin.bias.double()).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    fp32 = F.linear(x, lin.weight, lin.bias).detach()
    rel = float((got - fp32).norm() / fp32.norm())
    assert rel < (0.02 if cls is Int8Linear else 0.1), rel  # against fp32: the rounding of weights and input
    for i in range(m):  # each row alone gives exactly what it gives in the batch
        assert torch.equal(q(x[i:i + 1]), got[i:i + 1])
    # Where the kernels do not run (CUDA, no compiler) the input stays fp32: as close to fp32.
    with mock.patch.object(kernels, "available", return_value=False):
        fallback = q(x).detach()
    assert not torch.equal(fallback, got)
    assert float((fallback - fp32).norm() / fp32.norm()) < (0.01 if cls is Int8Linear else 0.1)


@pytest.mark.parametrize("cls,k", [(Int8Linear, 37), (Int4Linear, 64)])
def test_a_non_finite_input_row_gives_nan_in_its_own_row_only_and_edge_rows_work(cls, k):
    q = cls(Linear(k, 8))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(3, k)
        x[1, 5] = bad
        y = q(x)
        assert y[1].isnan().all() and torch.equal(y[[0, 2]], q(x[[0, 2]]))
    assert torch.equal(q(torch.zeros(2, k)), q.bias.expand(2, 8))  # an all-zero row: the bias
    assert q(torch.zeros(0, k)).shape == (0, 8)  # no rows: no output, no error


def test_int4_needs_input_widths_in_whole_groups():
    assert type(_quantised(Linear(96, 8), "int4")) is Int4Linear
    assert type(_quantised(Linear(36, 8), "int4")) is Int8Linear  # 36 is not a multiple of 32: int8


def _prompts():
    return [f"tell me about item {i} " * (1 + i % 3) for i in range(10)]


@pytest.fixture(scope="module")
def fp32_tokens(tiny_llama):
    with pipeline(tiny_llama) as pipe:
        return [r.token_ids for r in pipe(_prompts(), gen_config=GEN)]


def test_int8_decoder_weights_and_agreement_with_fp32(tiny_llama, fp32_tokens):
    """Teacher-forced (every position scored on the same tokens, so one flipped token cannot
    derail the rest): the next-token argmax agrees with fp32's at >= 90% of positions and the
    logits move by a few percent. A random tiny model's top two logits are close (median margin
    ~0.2), which makes this a hard case; free-running greedy tokens are reported too. (Random
    weights are a poor judge of int4: the demo model's test below is its check.)"""
    ids = [list(range(5 + i, 45 + i)) for i in range(8)]
    with pipeline(tiny_llama) as pipe:
        want = pipe.get_logits(ids)
    with pipeline(tiny_llama, EngineConfig(quantization="int8")) as pipe:
        model = pipe.family.model
        assert [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert not any(type(m) is Linear for m in model.modules()) and model.lm_head.quantized is not None
        got = pipe.get_logits(ids)
        tokens = [r.token_ids for r in pipe(_prompts(), gen_config=GEN)]
    agree = sum(float((g.argmax(-1) == w.argmax(-1)).float().mean()) for g, w in zip(got, want)) / len(ids)
    rel = max(float((g - w).norm() / w.norm()) for g, w in zip(got, want))
    same = sum(a == b for g, w in zip(tokens, fp32_tokens) for a, b in zip(g, w)) / sum(map(len, fp32_tokens))
    print(f"int8 vs fp32: teacher-forced argmax agreement {agree:.3f}, logits' relative error <= {rel:.3f}, "
          f"free-running greedy tokens equal {same:.2f}")
    assert agree >= 0.9 and rel <= 0.05, (agree, rel)


def _demo_scores(mode):
    items = {k: scenes.eval_items(k, 60) for k in ("shape", "colour", "count", "position")}
    with pipeline(default_model_path(), EngineConfig(quantization=mode)) as pipe:
        quantised = [m for m in pipe.family.model.modules() if isinstance(m, _QuantLinear)]
        assert bool(quantised) == (mode is not None)
        if mode == "int4":
            assert any(isinstance(m, Int4Linear) for m in quantised)
        scores = {}
        for kind, its in items.items():
            out = pipe([(q, s.image) for s, q, _ in its], gen_config=GenerationConfig(max_new_tokens=8))
            scores[kind] = sum(o.text.strip() == a for o, (_, _, a) in zip(out, its)) / len(its)
    return scores


@pytest.mark.parametrize("mode,allowed", [("int8", 1), ("int4", 2)])
def test_the_demo_model_answers_as_well_quantised(mode, allowed):
    """The issue's bounds are 1 point (int8) and 3 (int4) on 500 questions a type; on these 60 a
    type that is one answer (1.7 points) for int8 and two for int4."""
    fp32, quant = _demo_scores(None), _demo_scores(mode)
    allowed /= 60
    print(f"demo model, held-out questions: fp32 {fp32}, {mode} {quant}")
    assert all(quant[k] >= fp32[k] - allowed - 1e-9 for k in fp32), (fp32, quant)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", [dict(enable_prefix_caching=False), dict(block_size=4, max_prefill_token_num=7),
                                 dict(num_gpu_blocks=24, block_size=4)], ids=["batched", "chunked", "preempted"])
def test_quantised_batch_invariance(tiny_llama, mode, cfg):
    alone = []
    with pipeline(tiny_llama, EngineConfig(quantization=mode, enable_prefix_caching=False)) as pipe:
        for p in _prompts():
            alone.append(pipe(p, gen_config=GEN).token_ids)
    with pipeline(tiny_llama, EngineConfig(quantization=mode, **cfg)) as pipe:
        assert [r.token_ids for r in pipe(_prompts(), gen_config=GEN)] == alone
        if "num_gpu_blocks" in cfg:
            assert pipe.engine.scheduler.num_preemptions > 0


@pytest.mark.parametrize("mode", MODES)
def test_a_quantised_vlm_keeps_its_vision_tower(tiny_llava, mode):
    llm = LLM(model=tiny_llava, quantization=mode)
    try:
        model = llm._pipe.family.model
        out = llm.generate({"prompt": "USER: <image>\nWhat is this? ASSISTANT:",
                            "multi_modal_data": {"image": tm.make_image(3)}},
                           SamplingParams(max_tokens=8, temperature=0))
        assert len(out[0].outputs[0].token_ids) >= 1
        names = [n for n, m in model.named_modules() if isinstance(m, _QuantLinear)]
        assert names and not any("vision" in n for n in names)
        assert any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if "vision" in n)
    finally:
        llm.close()


@pytest.mark.parametrize("cfg", [dict(enable_prefix_caching=False), dict(block_size=4, max_prefill_token_num=7),
                                 dict(num_gpu_blocks=24, block_size=4)], ids=["batched", "chunked", "preempted"])
def test_a_bf16_kv_cache_keeps_batch_invariance(tiny_llama, cfg):
    """kv_cache_dtype="bfloat16": the cache holds half fp32's bytes; attention reads keys and values
    rounded to bf16 everywhere (fresh chunks too), so a request gets the same tokens alone, batched,
    chunked and preempted, on the native decode kernel."""
    alone = []
    with pipeline(tiny_llama, EngineConfig(kv_cache_dtype="bf16", enable_prefix_caching=False)) as pipe:
        assert pipe.engine.runner.native_decode
        assert all(k.dtype == torch.bfloat16 for k, _ in pipe.engine.runner.kv_caches)
        for p in _prompts():
            alone.append(pipe(p, gen_config=GEN).token_ids)
    with pipeline(tiny_llama, EngineConfig(kv_cache_dtype="bfloat16", **cfg)) as pipe:
        assert [r.token_ids for r in pipe(_prompts(), gen_config=GEN)] == alone
        if "num_gpu_blocks" in cfg:
            assert pipe.engine.scheduler.num_preemptions > 0


def test_a_bf16_kv_cache_stays_close_to_fp32(tiny_llama):
    ids = [list(range(5 + i, 45 + i)) for i in range(4)]
    with pipeline(tiny_llama) as pipe:
        want = pipe.get_logits(ids)
    llm = LLM(model=tiny_llama, kv_cache_dtype="bfloat16")
    try:
        got = llm._pipe.get_logits(ids)
    finally:
        llm.close()
    rel = max(float((g - w).norm() / w.norm()) for g, w in zip(got, want))
    assert 0 < rel < 0.02, rel


def test_quantization_values_are_checked():
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="'int4'"):
        EngineConfig(quantization="awq")
    with pytest.raises(ValueError, match="'int4'"):
        LLM(model="/nonexistent", quantization="gptq")
