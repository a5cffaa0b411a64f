"""The rule by which rank 0 judges a tensor-parallel step (``parallel.Executor.run``), without
processes: an executor whose workers answer what the test says.

All ranks failing alike is the step's own error (a bad input fails every rank at the same
place) and the group goes on; a rank that failed alone, or died, or stayed silent, fails the
step naming it, and the group is broken for good, so the engine reports unhealthy."""

from __future__ import annotations

import pytest

from seer.engine.parallel import Executor


class FakeWorkers(Executor):
    def __init__(self, answers):
        self.size = len(answers) + 1
        self.answers = answers
        self.sent = 0

    def _send(self, data):
        self.sent += 1

    def _answers(self):
        return dict(enumerate(self.answers, 1))

    def _alive(self):
        return True


def _fail():
    raise ValueError("image encoder gave 3 features for 4 placeholders")


def test_every_rank_ok_returns_rank0s_result():
    w = FakeWorkers([None, None])
    assert w.run("step", lambda: 42) == 42 and w.alive and w.sent == 1


def test_all_ranks_failing_alike_is_the_steps_own_error():
    w = FakeWorkers(["ValueError: image encoder gave 3 features for 4 placeholders"])
    with pytest.raises(ValueError, match="3 features"):
        w.run("step", _fail)
    assert w.alive
    w.answers = [None]
    assert w.run("next", lambda: 1) == 1


@pytest.mark.parametrize("answer", ["RuntimeError: CUDA out of memory", "its process (pid 7) has died (exit code -9)",
                                    "no answer within 70s"])
def test_a_rank_failing_alone_breaks_the_group_and_is_named(answer):
    w = FakeWorkers([None, answer])
    with pytest.raises(RuntimeError, match=f"tensor-parallel rank 2 failed: .*{answer[:12]}"):
        w.run("step", lambda: 42)
    assert not w.alive
    with pytest.raises(RuntimeError, match="rank 2"):  # every later step fails at once
        w.run("next", lambda: 1)
    assert w.sent == 1


def test_rank0_failing_alone_breaks_the_group():
    w = FakeWorkers([None])
    with pytest.raises(RuntimeError):
        w.run("step", _fail)
    assert not w.alive
