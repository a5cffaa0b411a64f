"""The block manager and the scheduler alone: pure Python, no model."""

from seer.config import GenerationConfig
from seer.engine.kv_cache import BlockManager
from seer.engine.request import MMItem, PromptInputs, Sequence, SeqStatus
from seer.engine.scheduler import Scheduler

GEN = GenerationConfig(max_new_tokens=8)


def seq(tokens, items=()):
    return Sequence(PromptInputs(list(tokens), list(items)), GEN, 10_000)


def run_step(sched: Scheduler):
    out = sched.schedule()
    sched.update(out)
    for s in out.seqs:  # pretend every sequence that finished its prompt sampled token 7
        if s.num_computed_tokens == s.num_tokens:
            s.token_ids.append(7)
    return out


def test_prefix_blocks_are_shared_and_released():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(range(10))
    bm.allocate(a, 10)
    a.num_computed_tokens = 10
    bm.commit(a)
    assert a.num_committed_blocks == 2  # the partial third block is not published
    b = seq(list(range(8)) + [99, 98])
    assert bm.match_prefix(b) == 8
    assert b.block_table == a.block_table[:2]
    assert bm.ref_count[a.block_table[0]] == 2
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 16
    c = seq(range(10))
    assert bm.match_prefix(c) == 8  # still findable after every user left


def test_a_full_match_leaves_one_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(range(8))
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.commit(a)
    assert bm.match_prefix(seq(range(8))) == 4


def test_image_hash_is_part_of_the_block_key():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq([1, 2, 5, 5, 5, 5, 3, 4, 9], [MMItem(2, 4, "img-a")])
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.commit(a)
    same = seq([1, 2, 5, 5, 5, 5, 3, 4, 9], [MMItem(2, 4, "img-a")])
    other = seq([1, 2, 5, 5, 5, 5, 3, 4, 9], [MMItem(2, 4, "img-b")])
    assert bm.match_prefix(same) == 8
    assert bm.match_prefix(other) == 0


def test_eviction_reuses_cached_blocks_when_the_pool_is_dry():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq(range(8))
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.commit(a)
    bm.free(a)
    b = seq(range(100, 108))
    assert bm.match_prefix(b) == 0
    assert bm.can_allocate(b, 8)
    bm.allocate(b, 8)
    assert sorted(b.block_table) == [0, 1, 2, 3]
    assert bm.match_prefix(seq(range(8))) == 0  # a's blocks were evicted and forgotten


def test_continuous_batching_and_chunked_prefill():
    bm = BlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_tokens=6)
    a, b = seq(range(10)), seq(range(20, 23))
    sched.add(a)
    out = run_step(sched)
    assert out.num_new_tokens == [6]  # a's prompt is chunked by the prefill budget
    sched.add(b)
    out = run_step(sched)
    assert [s.request_id for s in out.seqs] == [a.request_id, b.request_id]
    assert out.num_new_tokens == [4, 2]  # a finishes its prompt, b starts within the budget
    out = run_step(sched)
    assert out.num_new_tokens == [1, 1]  # a decodes, b's last prompt token
    sched.finish(a, "stop")
    assert a.status is SeqStatus.FINISHED and not a.block_table
    out = run_step(sched)
    assert out.seqs == [b] and out.num_new_tokens == [1]


def test_preemption_frees_the_youngest_and_recomputes_it():
    bm = BlockManager(num_blocks=7, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_tokens=100)
    a, b = seq(range(12)), seq(range(50, 62))
    sched.add(a)
    sched.add(b)
    run_step(sched)  # both prompts: 3 blocks each, one block left
    assert bm.num_free_blocks == 1
    out = run_step(sched)  # a takes the last block for token 13; b cannot grow and is preempted
    assert out.preempted == [b] and out.seqs == [a]
    assert b.status is SeqStatus.WAITING and b.num_computed_tokens == 0 and not b.block_table
    assert sched.waiting[0] is b and sched.num_preemptions == 1


def test_a_sequence_larger_than_the_pool_fails_alone():
    bm = BlockManager(num_blocks=2, block_size=4)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_tokens=100)
    big, small = seq(range(20)), seq(range(3))
    sched.add(big)
    sched.add(small)
    out = run_step(sched)
    assert out.failed == [big] and big.finish_reason == "error" and "KV cache" in big.error
    assert out.seqs == [small]


def test_prefill_chunks_never_end_inside_a_bidirectional_image():
    image = MMItem(offset=5, length=4, hash="img", bidirectional=True)
    s = seq(range(20), [image])
    chunk = Scheduler._chunk
    assert chunk(s, 0, 7) == 5  # would end at 7, inside [5, 9): stop before the image
    assert chunk(s, 0, 3) == 3  # ends before the image: as asked
    assert chunk(s, 5, 2) == 4  # starts at the image: take all of it, past the budget
    assert chunk(s, 6, 1) == 3  # starts inside it (a cached prefix): run to its end
    assert chunk(s, 0, 0) == 0
    plain = seq(range(20), [MMItem(offset=5, length=4, hash="img")])
    assert chunk(plain, 0, 7) == 7  # causal images split anywhere
    sched = Scheduler(BlockManager(num_blocks=64, block_size=4), max_batch_size=4, max_prefill_tokens=7)
    sched.add(s)
    assert [run_step(sched).num_new_tokens for _ in range(4)] == [[5], [7], [7], [1]]
