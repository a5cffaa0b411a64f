"""The engine loop: aborts free their blocks, failures stay local, close() never hangs a waiter."""

import os
import queue
import threading
import time

import pytest
import torch

from seer import GenerationConfig, pipeline
from seer.layers.attention import AttentionMetadata, paged_attention
from seer.messages import to_conversation
from seer import kernels

import tiny_models as tm

LONG = GenerationConfig(max_new_tokens=400, ignore_eos=True)


@pytest.fixture(scope="module")
def pipe(tiny_llava):
    with pipeline(tiny_llava) as p:
        yield p


def _submit(pipe, prompt, gen):
    q = queue.Queue()
    rid = pipe.engine.add_request(pipe.family.encode(to_conversation(prompt)), gen, q.put)
    return rid, q


def _drain(q, timeout=60):
    outs = []
    while True:
        out = q.get(timeout=timeout)
        outs.append(out)
        if out.finished:
            return outs


def test_abort_frees_blocks(pipe):
    eng = pipe.engine
    rid, q = _submit(pipe, "tell me a long story", LONG)
    first = q.get(timeout=60)  # it is running
    assert not first.finished
    assert eng.blocks.num_free_blocks < eng.blocks.num_blocks
    eng.abort(rid)
    outs = _drain(q)
    assert outs[-1].finish_reason == "abort"
    assert outs[-1].num_output_tokens < 400
    eng.blocks.reset_prefix_cache()
    assert eng.blocks.num_free_blocks == eng.blocks.num_blocks


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(pipe, monkeypatch):
    real = pipe.engine.runner.execute
    calls = {"n": 0}

    def flaky(sched):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return real(sched)

    monkeypatch.setattr(pipe.engine.runner, "execute", flaky)
    bad = pipe("this one meets the failure", gen_config=GenerationConfig(max_new_tokens=4))
    assert bad.finish_reason == "error" and "injected failure" in bad.error
    good = pipe("this one runs after it", gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True))
    assert good.finish_reason == "length" and good.generate_token_len == 4


@pytest.mark.parametrize("when", ["prefill", "decode"])
def test_a_request_that_fails_the_step_fails_alone(pipe, monkeypatch, when):
    """A step that fails because of one request (here: the runner raises whenever that request's
    marked token is in the step, in its prompt or as its third output token) ends that request with
    the error; the requests batched with it keep exactly the tokens they get alone, with images."""
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    image = tm.make_image(3, (40, 32))
    prompts = ["the first innocent prompt", ("one with an image", [image]), "and a third"]
    alone = [r.token_ids for r in pipe(prompts, gen_config=gen)]
    bad = "the bad one, longer than the rest of them"
    others = {t for p in prompts for t in pipe.family.encode(to_conversation(p)).token_ids}
    others |= {t for ts in alone for t in ts}
    if when == "prefill":  # a token of its prompt only
        candidates = pipe.family.encode(to_conversation(bad)).token_ids
        pipe.engine.blocks.reset_prefix_cache()  # so its whole prompt is computed in the step
    else:  # one of its output tokens (fed back in a later decode step), not its first
        candidates = pipe(bad, gen_config=gen).token_ids[1:]
    marker = next(t for t in candidates if t not in others)
    real, seen = pipe.engine.runner.execute, []

    def failing(step):
        seen.append(len(step.chunks))
        if marker in step.input_ids:
            raise RuntimeError("injected: a bad token")
        return real(step)

    monkeypatch.setattr(pipe.engine.runner, "execute", failing)
    subs = [_submit(pipe, p, gen) for p in [bad] + prompts]
    outs = [_drain(q) for _, q in subs]
    assert outs[0][-1].finish_reason == "error" and "injected: a bad token" in outs[0][-1].error
    assert [[t for o in out for t in o.new_token_ids] for out in outs[1:]] == alone
    assert all(out[-1].finish_reason == "length" for out in outs[1:])
    assert max(seen) > 1  # they were batched: the failure was found by running them one at a time
    eng = pipe.engine
    eng.blocks.reset_prefix_cache()
    assert eng.blocks.num_free_blocks == eng.blocks.num_blocks


def test_a_row_whose_sampling_fails_fails_alone(pipe):
    """A request whose settings break the draw at run time (here a NaN temperature set past the
    config's checks) ends with an error; the requests batched with it keep their exact tokens."""
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    prompts = ["the first innocent prompt", "a second one", "and a third"]
    alone = [r.token_ids for r in pipe(prompts, gen_config=gen)]
    bad = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, random_seed=1)
    bad.temperature = float("nan")
    subs = [_submit(pipe, p, g) for p, g in zip(["the bad one"] + prompts, [bad] + [gen] * 3)]
    outs = [_drain(q) for _, q in subs]
    assert outs[0][-1].finish_reason == "error" and "sampling failed" in outs[0][-1].error
    assert [[t for o in out for t in o.new_token_ids] for out in outs[1:]] == alone
    assert all(out[-1].finish_reason == "length" for out in outs[1:])


def test_stop_token_ids_past_the_vocabulary_are_harmless(pipe):
    gen = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    want = pipe("hello", gen_config=gen).token_ids
    got = pipe("hello", gen_config=gen.replace(min_new_tokens=3, stop_token_ids=[10**9]))
    assert got.finish_reason == "length" and got.token_ids == want


def test_the_runner_takes_plain_data_that_survives_pickling(pipe, monkeypatch):
    """Each step reaches the runner as a StepInput of plain data (no Sequence, whose sink is a
    closure and cannot be pickled): run through a pickle round trip, a batch of text and image
    requests with chunked prompts gives exactly the tokens of the direct run."""
    import pickle

    from seer.engine.step import StepInput

    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    images = [tm.make_image(i, (40 + 8 * i, 32)) for i in range(3)]
    prompts = ["plain text", ("one image", images[:1]), ("two images", images[1:]), ("again", images[:1])]
    want = [r.token_ids for r in pipe(prompts, gen_config=gen)]
    real, seen = pipe.engine.runner.execute, []

    def through_pickle(step):
        assert isinstance(step, StepInput)
        seen.append(len(step.chunks))
        return real(pickle.loads(pickle.dumps(step)))

    monkeypatch.setattr(pipe.engine.runner, "execute", through_pickle)
    pipe.engine.runner.features.clear()  # the images are encoded from the pickled pixels
    pipe.engine.blocks.reset_prefix_cache()
    assert [r.token_ids for r in pipe(prompts, gen_config=gen)] == want
    assert max(seen) > 1


def test_close_aborts_waiters(tiny_llava):
    p = pipeline(tiny_llava)
    rid, q = _submit(p, "a long story please", LONG)
    q.get(timeout=60)
    closer = threading.Thread(target=p.close)
    closer.start()
    outs = _drain(q)
    closer.join(60)
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert "closed" in outs[-1].error
    with pytest.raises(RuntimeError, match="closed"):
        p("again")


def _random_paged(B, Hq, Hkv, D, bs, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    nblk = max(-(-n // bs) for n in lens)
    num_blocks = B * nblk + 3
    kc = torch.randn(num_blocks, bs, Hkv, D, generator=g)
    vc = torch.randn(num_blocks, bs, Hkv, D, generator=g)
    perm = torch.randperm(num_blocks, generator=g)[: B * nblk].view(B, nblk)
    q = torch.randn(B, Hq, D, generator=g)
    return q, kc, vc, perm


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernel")
@pytest.mark.parametrize("B,Hq,Hkv,D,bs", [(1, 4, 4, 16, 4), (5, 8, 2, 32, 16), (33, 6, 3, 64, 8)])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_native_decode_equals_torch_path(B, Hq, Hkv, D, bs, kv_dtype):
    """Both decode branches of paged_attention, on the same paged context, agree (an fp32 or a
    bf16 cache: kv_cache_dtype)."""
    lens = [1 + (7 * i) % 50 for i in range(B)]
    q, kc, vc, table = _random_paged(B, Hq, Hkv, D, bs, lens)
    kc, vc = kc.to(kv_dtype), vc.to(kv_dtype)
    new_k, new_v = torch.randn(B, Hkv, D), torch.randn(B, Hkv, D)
    lens_t = torch.tensor(lens)
    last = torch.tensor([table[b, (n - 1) // bs] * bs + (n - 1) % bs for b, n in enumerate(lens)])
    nblk = table.shape[1]
    mask = (torch.arange(nblk * bs)[None] < lens_t[:, None])[:, None, None, :]
    work = (torch.empty(B * nblk, bs, Hkv, D, dtype=kv_dtype), torch.empty(B * nblk, bs, Hkv, D, dtype=kv_dtype))
    outs = []
    for decode_mask in (None, mask):
        meta = AttentionMetadata(slot_mapping=last, num_decode=B, decode_blocks=table, decode_lens=lens_t,
                                 decode_mask=decode_mask, workspace=work)
        outs.append(paged_attention(q, new_k, new_v, kc.clone(), vc.clone(), meta, D ** -0.5))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_kv_pool_is_a_share_of_free_memory_capped_by_use(monkeypatch):
    from seer.config import EngineConfig
    from seer.engine import engine as eng_mod

    monkeypatch.setattr(eng_mod, "_available_ram", lambda: 1000 * 4096)
    cpu = torch.device("cpu")
    cfg = EngineConfig(cache_max_entry_count=0.5, block_size=16, max_batch_size=4)
    assert eng_mod.kv_cache_blocks(cfg, 4096, session_len=10_000, device=cpu) == 500
    # never more than max_batch_size sequences of session_len can use
    assert eng_mod.kv_cache_blocks(cfg, 4096, session_len=32, device=cpu) == 4 * 2 + 1
    assert eng_mod.kv_cache_blocks(EngineConfig(num_gpu_blocks=7), 4096, 10_000, cpu) == 7


def test_a_request_too_big_for_the_pool_fails_alone(tiny_llava):
    from seer import EngineConfig

    with pipeline(tiny_llava, EngineConfig(num_gpu_blocks=4, block_size=4)) as p:
        out = p(["a fairly long prompt that needs more than four blocks of four tokens each, surely", "hi"],
                gen_config=GenerationConfig(max_new_tokens=2, ignore_eos=True))
        assert out[0].finish_reason == "error" and "KV cache" in out[0].error
        assert out[1].finish_reason == "length"
        assert not p.engine._seqs  # nothing left behind


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")
@pytest.mark.parametrize("M,K,N,bias", [(1, 16, 64, False), (7, 64, 200, True), (13, 48, 30, True),
                                        (16, 640, 1920, False), (64, 96, 66, True), (300, 33, 100, False),
                                        (100, 2048, 40, True)])  # the last in blocks of rows
def test_panel_linear_equals_torch_and_a_row_is_the_same_alone(M, K, N, bias):
    """The packed fp32 matmul: torch's result up to rounding, N not a multiple of the panel width
    (columns past N are padding), and each row bitwise what it is alone or in any other batch."""
    g = torch.Generator().manual_seed(M)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    packed = kernels.pack_panels(w)
    assert packed.shape == (-(-N // kernels.PANEL), K, kernels.PANEL)
    assert torch.equal(kernels.unpack_panels(packed, N), w)
    y = kernels.panel_linear(x, packed, b, N)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-4)
    for lo, hi in [(0, 1), (M - 1, M), (M // 3, M // 2 + 1), (1, M)]:
        if lo < hi:
            assert torch.equal(kernels.panel_linear(x[lo:hi].contiguous(), packed, b, N), y[lo:hi])


def _vm_flags(addr: int) -> list[str]:
    """The ``VmFlags`` of the mapping that holds ``addr`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
@pytest.mark.parametrize("shape,dtype", [((1536, 1024), torch.float32), ((3, 1000, 999), torch.bfloat16),
                                         ((5, 7), torch.float32)])
def test_weights_are_placed_on_huge_pages(shape, dtype):
    """``huge_page_empty``: the shape and dtype asked for; from 2 MB up, starting on a 2 MB boundary
    in memory advised for huge pages (VmFlags ``hg``), as ``pack_panels`` places a packed weight."""
    t = kernels.huge_page_empty(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
    t.fill_(1)
    assert bool((t == 1).all())
    if t.numel() * t.element_size() >= 2 << 20:
        assert t.data_ptr() % (2 << 20) == 0 and "hg" in _vm_flags(t.data_ptr())
    packed = kernels.pack_panels(torch.randn(2048, 768))
    assert packed.data_ptr() % (2 << 20) == 0 and "hg" in _vm_flags(packed.data_ptr() + packed.nbytes - 1)


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")
def test_packed_linear_layers_free_their_weight_and_keep_their_answers():
    """``pack_linears``: an fp32 ``Linear`` moves its weight into the panel layout (one copy left),
    answers as before for 1-D, 2-D and 3-D inputs, and with add_bias=False; a head tied to seer's
    embedding is packed and the embedding looks its rows up there; a weight shared with a module
    that cannot use the packed copy stays as it is."""
    from torch import nn

    from seer.layers.linear import Linear, pack_linears
    from seer.layers.vocab import ParallelLMHead, VocabParallelEmbedding, finish_vocab

    torch.manual_seed(0)
    model = nn.Module()
    model.a, model.b = Linear(48, 70), Linear(48, 70, bias=False)
    model.emb = nn.Embedding(70, 48)
    model.b.weight = model.emb.weight  # tied to a module that only knows its weight
    model.vemb, model.head = VocabParallelEmbedding(70, 48), ParallelLMHead(48, 70)
    nn.init.normal_(model.vemb.weight)
    finish_vocab(model.vemb, model.head, tie=True)
    x, ids = torch.randn(2, 5, 48), torch.tensor([[0, 69, 33], [31, 32, 5]])
    want = [model.a(x), model.a(x[0, 0]), torch.nn.functional.linear(x, model.a.weight), model.b(x),
            model.head(x), model.vemb(ids)]
    assert pack_linears(model) == 2
    assert model.a.packed is not None and model.a.weight.numel() == 0 and model.b.packed is None
    assert model.head.packed is model.vemb.packed is not None and model.vemb.weight.numel() == 0
    got = [model.a(x), model.a(x[0, 0]), model.a(x, add_bias=False), model.b(x), model.head(x), model.vemb(ids)]
    assert torch.equal(got[-1], want[-1])
    for g_, w_ in zip(got, want):
        assert g_.shape == w_.shape
        torch.testing.assert_close(g_, w_, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not kernels.available() or not hasattr(os, "fork"), reason="no native kernels or no fork")
def test_native_kernels_work_in_a_forked_child_and_from_threads():
    """The kernels' thread pool: a child forked after the parent started its workers starts its own
    (no deadlock waiting for threads fork did not copy), and callers on several threads each get
    their own results."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 256, generator=g), torch.randn(512, 256, generator=g)  # big enough for 2 threads
    want, packed = torch.nn.functional.linear(x, w), kernels.pack_panels(w)
    torch.testing.assert_close(kernels.panel_linear(x, packed, None, 512), want, rtol=1e-5, atol=1e-4)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if the kernel returns the right answer
        ok = torch.allclose(kernels.panel_linear(x, packed, None, 512), want, rtol=1e-5, atol=1e-4)
        os._exit(0 if ok else 1)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("a forked child's kernel call hung")
    assert os.waitstatus_to_exitcode(status) == 0
    results = [None] * 4
    xs = [torch.randn(8, 256, generator=g) for _ in results]

    def call(i):
        for _ in range(50):
            results[i] = kernels.panel_linear(xs[i], packed, None, 512)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for xi, r in zip(xs, results):
        torch.testing.assert_close(r, torch.nn.functional.linear(xi, w), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")
@pytest.mark.parametrize("T,D", [(1, 768), (5, 37), (300, 192)])
def test_native_rms_norm_equals_torch(T, D):
    g = torch.Generator().manual_seed(T)
    x, w = 3 * torch.randn(T, 2 * D, generator=g), torch.randn(D, generator=g)
    want = torch.nn.functional.rms_norm(x[:, :D], (D,), w, 1e-6)
    torch.testing.assert_close(kernels.rms_norm(x[:, :D], w, 1e-6), want, rtol=1e-6, atol=2e-6)  # rows strided
    assert torch.equal(kernels.rms_norm(x[:, :D].contiguous(), w, 1e-6), kernels.rms_norm(x[:, :D], w, 1e-6))
    if T > 1:  # columns are not rows: the caller takes the torch path
        assert kernels.rms_norm(x[:, :D].t(), w[:T], 1e-6) is None


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")
@pytest.mark.parametrize("T,H,D", [(1, 12, 64), (7, 4, 32), (300, 2, 128)])
def test_native_rotary_is_bitwise_the_operators(T, H, D):
    from seer.layers.rotary import apply_rotary, rotate_half

    g = torch.Generator().manual_seed(T)
    qkv = torch.randn(T, (2 * H + 1) * D, generator=g)  # q and k: column slices of a fused projection
    q, k = qkv[:, :H * D].view(T, H, D), qkv[:, H * D:2 * H * D].view(T, H, D)
    cos, sin = torch.randn(T, 1, D, generator=g), torch.randn(T, 1, D, generator=g)
    got_q, got_k = apply_rotary(q, k, cos, sin)
    assert torch.equal(got_q, q * cos + rotate_half(q) * sin) and torch.equal(got_k, k * cos + rotate_half(k) * sin)
    assert kernels.rotary(q, torch.randn(T, 1, 2 * D)[..., ::2], sin) is None  # a layout it does not take


def test_torch_path_without_native_kernels(tiny_llava, monkeypatch):
    """Where no C compiler exists (or on CUDA) the torch paths run: same tokens as transformers."""
    import tiny_models as tm

    monkeypatch.setattr(kernels, "available", lambda: False)
    images = [tm.make_image(3)]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]
    want = tm.hf_greedy(tiny_llava, tm.hf_inputs(tiny_llava, msgs, images), max_new_tokens=24, ignore_eos=True)
    with pipeline(tiny_llava) as p:
        assert not p.engine.runner.native_decode
        gen = GenerationConfig(max_new_tokens=24, ignore_eos=True)
        assert p(("describe", images), gen_config=gen).token_ids == want
        batch = p([("describe", images), ("describe", [tm.make_image(4)]), "hello"], gen_config=gen)
        assert batch[0].token_ids == want
