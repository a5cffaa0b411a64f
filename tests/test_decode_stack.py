"""The native decode step (``seer.layers.decode_stack``): a pure decode step from token ids to
logits, through all of a Llama-style decoder's layers, in one call gives bitwise what the
embedding, the layer-by-layer forward, the final norm and the LM head give
(the same tokens and the same logprobs, to the last bit), for fp32, int8 and int4 weights, an
fp32 or bf16 KV cache, grouped-query attention, q/k/v biases and per-head q/k norms (Qwen3);
steps it does not serve (prefill rows, a sliding-window mask) and layers it does not know
(unpacked fp32 weights) take the Python path."""

import contextlib
from unittest import mock

import pytest
import torch

from seer import LLM, SamplingParams, kernels
from seer.models import llama

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler: no native kernels")

PROMPTS = [f"tell me about item {i} " * (1 + i % 3) for i in range(6)]


def _generate(path, stack: bool, **cfg):
    """Tokens and logprobs of PROMPTS (all at once, then the first alone), and how many steps the
    native decode step served."""
    calls = []

    def counted(real):
        def call(*a, **k):
            calls.append((real.__name__, a[4].shape[0]))  # (which, rows): a[4] is cos or the token ids
            return real(*a, **k)
        return call

    off = mock.patch.object(llama.LlamaForCausalLM, "_decode_stack", lambda self, kv: None)
    llm = LLM(model=path, enable_prefix_caching=False, **cfg)
    try:
        with mock.patch.object(kernels, "decode_layers", counted(kernels.decode_layers)), \
                mock.patch.object(kernels, "decode_step", counted(kernels.decode_step)), \
                (contextlib.nullcontext() if stack else off):
            sp = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)
            outs = [llm.generate(PROMPTS, sp, use_tqdm=False), llm.generate(PROMPTS[:1], sp, use_tqdm=False)]
    finally:
        llm.close()
    got = [(o.outputs[0].token_ids, [{t: lp.logprob for t, lp in d.items()} for d in o.outputs[0].logprobs])
           for out in outs for o in out]
    return got, calls


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("quant,kv", [(None, "auto"), ("int8", "auto"), ("int4", "auto"), (None, "bfloat16"),
                                      ("int8", "bfloat16")])
def test_the_native_decode_step_is_bitwise_the_layer_by_layer_forward(request, arch, quant, kv):
    path = request.getfixturevalue(f"tiny_{arch}")
    want, none = _generate(path, stack=False, quantization=quant, kv_cache_dtype=kv)
    got, calls = _generate(path, stack=True, quantization=quant, kv_cache_dtype=kv)
    assert not none
    # the whole step, token ids to logits, served decode steps of one and of all the sequences
    assert {("decode_step", 1), ("decode_step", len(PROMPTS))} <= set(calls)
    assert got == want


def test_the_whole_step_refuses_token_ids_and_positions_outside_its_tables(tiny_llama):
    """An id past the vocabulary or a position past the rotary table is an error of the call, raised
    before anything is read or written, never a read outside the tables."""
    from seer.layers.attention import AttentionMetadata

    llm = LLM(model=tiny_llama)
    try:
        model = llm._pipe.family.model
        llm.generate(PROMPTS[:1], SamplingParams(max_tokens=2), use_tqdm=False)
        stack = model._stack
        assert stack.ends is not None and stack.vocab == model.spec.vocab_size
        meta = AttentionMetadata(slot_mapping=torch.tensor([0]), num_decode=1, decode_blocks=torch.tensor([[0]]),
                                 decode_lens=torch.tensor([1]))
        for ids, pos in [([model.spec.vocab_size], [0]), ([-1], [0]), ([5], [model.rotary.cos.shape[0]]), ([5], [-1])]:
            with pytest.raises(RuntimeError, match="code 2"):
                stack.logits(torch.tensor(ids), torch.tensor(pos), meta)
    finally:
        llm.close()


def test_steps_it_does_not_serve_take_the_python_path(tiny_llama):
    llm = LLM(model=tiny_llama)
    try:
        model = llm._pipe.family.model
        llm.generate(PROMPTS[:1], SamplingParams(max_tokens=2), use_tqdm=False)
        stack = model._stack
        assert stack is not None and stack.fits(llm._pipe.engine.runner.kv_caches)
        x = torch.zeros(2, model.spec.hidden_size)
        meta = mock.Mock(num_decode=1, prefills=[object()], decode_mask=None, local=None)
        assert not stack.applies(x, meta)  # a step with prefill rows
        meta.num_decode, meta.prefills = 2, []
        assert stack.applies(x, meta)
        meta.decode_mask = torch.ones(2, 1, 1, 16, dtype=torch.bool)  # a sliding window's mask
        assert not stack.applies(x, meta)
        meta.decode_mask = None
        meta.num_decode = 300  # the packed fp32 kernel serves any number of rows
        assert stack.applies(torch.zeros(meta.num_decode, model.spec.hidden_size), meta)
        assert not stack.fits([(torch.zeros(1), torch.zeros(1))])  # another pool: described anew
    finally:
        llm.close()
    with mock.patch("seer.models.base.pack_linears", lambda model: 0):  # fp32 weights as loaded
        llm = LLM(model=tiny_llama)
    try:
        llm.generate(PROMPTS[:1], SamplingParams(max_tokens=2), use_tqdm=False)
        assert llm._pipe.family.model._stack is None
    finally:
        llm.close()
