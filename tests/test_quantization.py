"""Weight-only int8 (``EngineConfig(quantization="int8")``): the decoder's linear layers hold
int8 weights with a scale per output row, a quarter of the bytes; the native kernel's answer
equals the dequantised weight's; greedy tokens stay close to fp32's (the share that agrees is
measured and bounded below); a batch gives every request what it gets alone, cached, chunked
and preempted; a VLM quantises its decoder and keeps its vision tower."""

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from seer import LLM, EngineConfig, GenerationConfig, SamplingParams, pipeline
from seer.layers.linear import Linear
from seer.layers.quant import Int8Linear, MAX_KERNEL_ROWS

GEN = GenerationConfig(max_new_tokens=32, ignore_eos=True)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 17, MAX_KERNEL_ROWS, MAX_KERNEL_ROWS + 9])
@pytest.mark.parametrize("shape", [(96, 64), (70, 36)])  # the second: K and N not multiples of the tiles
def test_int8_linear_equals_the_dequantised_weight(rows, shape):
    torch.manual_seed(rows)
    n, k = shape
    lin = Linear(k, n, bias=True)
    q = Int8Linear(lin)
    assert q.qweight.dtype == torch.int8 and q.scales.shape == (n,)
    x = torch.randn(rows, k)
    want = F.linear(x, q.dequantized(), lin.bias)
    torch.testing.assert_close(q(x), want, atol=1e-4, rtol=1e-5)
    assert (q.dequantized() - lin.weight).abs().max() <= q.scales.max() / 2 + 1e-6  # rounding error bound
    if rows <= MAX_KERNEL_ROWS:  # the kernel: each row alone gives exactly what it gives in the batch
        for i in range(rows):
            assert torch.equal(q(x[i:i + 1]), q(x)[i:i + 1])


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
    ~0.2), which makes this a hard case; free-running greedy tokens are reported too."""
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


@pytest.mark.parametrize("cfg", [dict(enable_prefix_caching=False), dict(block_size=4, max_prefill_token_num=7),
                                 dict(num_gpu_blocks=24, block_size=4)], ids=["batched", "chunked", "preempted"])
def test_int8_batch_invariance(tiny_llama, cfg):
    alone = []
    with pipeline(tiny_llama, EngineConfig(quantization="int8", enable_prefix_caching=False)) as pipe:
        for p in _prompts():
            alone.append(pipe(p, gen_config=GEN).token_ids)
    with pipeline(tiny_llama, EngineConfig(quantization="int8", **cfg)) as pipe:
        assert [r.token_ids for r in pipe(_prompts(), gen_config=GEN)] == alone
        if "num_gpu_blocks" in cfg:
            assert pipe.engine.scheduler.num_preemptions > 0


def test_int8_vlm_keeps_its_vision_tower(tiny_llava):
    llm = LLM(model=tiny_llava, quantization="int8")
    try:
        model = llm._pipe.family.model
        out = llm.generate({"prompt": "USER: <image>\nWhat is this? ASSISTANT:",
                            "multi_modal_data": {"image": tm.make_image(3)}}, SamplingParams(max_tokens=8, temperature=0))
        assert len(out[0].outputs[0].token_ids) >= 1
        names = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
        assert names and not any("vision" in n for n in names)
        assert any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if "vision" in n)
    finally:
        llm.close()


def test_quantization_values_are_checked():
    with pytest.raises(ValueError, match="'int8'"):
        EngineConfig(quantization="awq")
    with pytest.raises(ValueError, match="'int8'"):
        LLM(model="/nonexistent", quantization="gptq")
