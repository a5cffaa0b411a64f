"""Tensor parallelism: ranks as processes, one gloo (CPU) or nccl (CUDA) group, one step input.

``EngineConfig(tp=N)`` runs the model as N ranks. Rank 0 lives in the engine's process: its
runner is the engine's, and the scheduler, block manager, sampler and detokenizer stay there.
Ranks 1..N-1 are an ``Executor``'s: worker processes (``distributed_executor_backend="mp"``,
the default: fresh interpreters, ``python -m seer.engine.tp_worker``, so a caller's script
needs no ``if __name__ == "__main__"`` guard) or Ray actors (``"ray"``, ``ray_executor.py``:
on this machine or across a Ray cluster). Each holds a ``Rank``: the same model family built
with its ``TPGroup``, so its decoder holds only its slices (Megatron-style: q/k/v and gate/up
split by output rows, o and down by input columns with one all-reduce each; KV heads split, or
replicated when there are fewer than N; embedding and LM head split by vocabulary rows,
``layers/vocab.py``; a VLM's vision tower whole on every rank, so each has the features it
scatters without a broadcast), and its own KV pool of its heads. Every step,
rank 0's runner sends the engine's ``StepInput`` (plain data, ``step.py``) to each worker,
every rank runs the forward, and rank 0's logits are the step's.

The group is a ``ProcessGroupGloo`` (or ``ProcessGroupNCCL`` when each rank has a GPU of its
own) made directly from a ``TCPStore`` that rank 0 hosts, not ``init_process_group``: several
engines (pipelines) can live in one process.

Faults (``Executor.run``): each worker answers every step with None or its error. Ranks that
failed alike failed on the step's input, and the group goes on; a rank that failed alone, died
or stayed silent fails the step with a message naming it, and breaks the group for good (the
engine then reports unhealthy). A collective waits at most ``COLLECTIVE_TIMEOUT`` seconds and
rank 0 at most ``ACK_TIMEOUT`` for an answer, so no caller waits longer than that for a step;
a dead worker process is found before the step is sent. ``close()`` ends every worker (and
kills what does not end within seconds); a worker process whose rank 0 went away (its socket
closes) exits by itself.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any, Optional

import torch

log = logging.getLogger("seer.engine")

COLLECTIVE_TIMEOUT = 60.0  # seconds a rank waits in an all-reduce before the step fails
START_TIMEOUT = 300.0  # seconds for the workers to load the model


@dataclass
class TPGroup:
    """This process's place in the tensor-parallel group (``size`` 1: no group)."""

    rank: int = 0
    size: int = 1
    pg: Any = None  # a torch.distributed ProcessGroup
    device: Optional[torch.device] = None  # this rank's device (None: the engine config's)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place."""
        if self.size > 1:
            self.pg.allreduce([t]).wait()
        return t


SINGLE = TPGroup()


def check_tp(tp: int, heads: int, kv_heads: int, intermediate: int) -> None:
    """``tp`` must divide the attention heads and the MLP width, and divide or be a multiple of the
    KV heads (then each KV head is held by tp / kv_heads ranks); else a ``ValueError`` naming them."""
    bad = []
    if heads % tp:
        bad.append(f"num_attention_heads={heads}")
    if intermediate % tp:
        bad.append(f"intermediate_size={intermediate}")
    if kv_heads % tp and tp % kv_heads:
        bad.append(f"num_key_value_heads={kv_heads} (neither divisible by tp nor dividing it)")
    if bad:
        raise ValueError(f"tp={tp} does not divide this model's {', '.join(bad)}; pick a tp that divides them")


def _store(port: int = 0, host: str = "127.0.0.1"):
    """The group's rendezvous: port 0 makes it (rank 0; it listens on every interface), a port
    joins the one at ``host``."""
    import torch.distributed as dist

    return dist.TCPStore(host, port, None, port == 0, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT),
                         wait_for_workers=False)


def rank_device(device: torch.device, rank: int, size: int) -> torch.device:
    """Rank ``rank``'s device: on CUDA with at least ``size`` GPUs, GPU ``rank``; otherwise every rank
    shares ``device`` (the CPU, or one GPU that the ranks then share)."""
    return torch.device("cuda", rank) if ranks_per_device(device, size) == 1 and size > 1 else device


def ranks_per_device(device: torch.device, size: int) -> int:
    """How many of ``size`` ranks share one device (and so its free memory)."""
    return 1 if device.type == "cuda" and torch.cuda.device_count() >= size else size


def _group(store, rank: int, size: int, device: torch.device) -> TPGroup:
    """This rank's group: nccl when each rank has a GPU of its own, else gloo (which also reduces
    CUDA tensors, through host memory: ranks sharing one GPU, where nccl refuses to run)."""
    import torch.distributed as dist

    device = rank_device(device, rank, size)
    timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT)
    if device.type == "cuda" and device.index is not None and dist.is_nccl_available():
        torch.cuda.set_device(device)
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, size, opts)
    else:
        pg = dist.ProcessGroupGloo(store, rank, size, timeout)
    return TPGroup(rank, size, pg, device)


class Rank:
    """A rank > 0: its group, its model family (its slices of the decoder), then its runner; it
    runs each step rank 0 sends and answers None, or the error its forward raised. Both executors
    (worker processes, Ray actors) hold one."""

    def __init__(self, rank: int, size: int, store_host: str, store_port: int, build: tuple, threads: int):
        from ..models.base import resolve_device
        from ..models.registry import family_for

        torch.set_num_threads(threads)
        path, raw, ecfg, vcfg, tcfg = self.build = build
        self.rank = rank
        tp = _group(_store(store_port, store_host), rank, size, resolve_device(ecfg)[0])
        self.family = family_for(raw)(path, raw, ecfg, vcfg, tcfg, tp=tp)
        self.runner = None

    def start(self, num_blocks: int) -> int:
        """Make the runner with a pool of ``num_blocks`` (rank 0's count); returns this process's pid."""
        from .runner import ModelRunner

        self.runner = ModelRunner.for_family(self.family, self.build[2], self.build[3], num_blocks)
        return os.getpid()

    def execute(self, data: bytes) -> Optional[str]:
        try:
            self.runner.execute(pickle.loads(data))
            return None
        except BaseException as e:  # noqa: BLE001 - rank 0 compares it with its own (see Executor.run)
            log.error("tensor-parallel rank %d: step failed: %s", self.rank, e)
            return _describe(e)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def worker_main(argv=None) -> int:
    """A rank > 0 (``python -m seer.engine.tp_worker``): connect to rank 0, build its ``Rank``, then
    run every step rank 0 sends, answering each, until rank 0 sends None or goes away."""
    import argparse
    from multiprocessing.connection import Client

    ap = argparse.ArgumentParser()
    for name in ("--rank", "--size", "--store-port", "--port", "--threads"):
        ap.add_argument(name, type=int, required=True)
    a = ap.parse_args(argv)
    conn = Client(("127.0.0.1", a.port), authkey=bytes.fromhex(os.environ.pop(_AUTHKEY_ENV)))
    conn.send(a.rank)
    try:
        me = Rank(a.rank, a.size, "127.0.0.1", a.store_port, conn.recv(), a.threads)
        me.start(conn.recv())
        conn.send(("ready", None))
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, which fails the start
        conn.send(("error", _describe(e)))
        return 1
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # rank 0 went away
            return 0
        if data == _STOP:
            return 0
        conn.send(me.execute(data))


_AUTHKEY_ENV = "SEER_TP_AUTHKEY"
_STOP = pickle.dumps(None)
ACK_TIMEOUT = COLLECTIVE_TIMEOUT + 10.0  # seconds rank 0 waits for the workers' answers to a step


class Executor:
    """Ranks 1..size-1, as processes (``Workers``) or Ray actors (``ray_executor.RayWorkers``).

    ``run`` sends a step to every worker, runs rank 0's forward, then takes each worker's answer.
    When all ranks failed alike (a bad input fails every rank at the same place, before any
    collective is left waiting), that is the step's own error and the group goes on. When a rank
    died or failed alone, its collectives no longer pair with rank 0's: the step fails naming the
    rank, and the group is broken for good (``alive`` False, so the engine reports unhealthy)."""

    size: int
    store: Any  # the group's TCPStore, which rank 0 hosts
    broken: Optional[str] = None

    def run(self, step, forward):
        if self.broken:
            raise RuntimeError(self.broken)
        self._send(pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL))
        try:
            out = forward()
        except BaseException as e:  # noqa: BLE001
            mine = _describe(e)
            self._judge(self._answers(), mine, f"rank 0 failed with {mine}")
            raise
        self._judge(self._answers(), None, "rank 0 did not")
        return out

    def _judge(self, answers: dict[int, Optional[str]], mine: Optional[str], rank0: str) -> None:
        """Break the group when any rank's answer differs from rank 0's outcome ``mine``."""
        odd = [(r, a) for r, a in answers.items() if a != mine]
        if odd:
            self.broken = "; ".join(f"tensor-parallel rank {r} " + (f"failed: {a}" if a else "succeeded")
                                    for r, a in odd) + f" ({rank0}); the ranks no longer agree and the engine " \
                                                       "cannot go on"
            raise RuntimeError(self.broken)

    @property
    def alive(self) -> bool:
        return self.broken is None and self._alive()

    def group(self, device: torch.device) -> TPGroup:
        """Rank 0's group on the executor's ``store`` (blocks until every worker has joined);
        ``device``: the engine config's."""
        return _group(self.store, 0, self.size, device)

    # what an executor provides
    def start(self, num_blocks: int) -> None: ...
    def _send(self, data: bytes) -> None: ...
    def _answers(self) -> dict[int, Optional[str]]: ...
    def _alive(self) -> bool: ...
    def close(self) -> None: ...


class Workers(Executor):
    """Ranks 1..size-1, each a fresh ``python -m seer.engine.tp_worker`` process (nothing of the
    caller's script is re-run in them), talking to rank 0 over an authenticated local socket."""

    def __init__(self, size: int, build: tuple):
        import secrets
        import subprocess
        import sys
        from multiprocessing.connection import Listener

        self.size = size
        threads = max(1, (os.cpu_count() or 1) // size)
        self.store = _store()
        key = secrets.token_bytes(32)
        listener = Listener(("127.0.0.1", 0), authkey=key)
        env = {**os.environ, _AUTHKEY_ENV: key.hex()}
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "seer.engine.tp_worker", "--rank", str(rank), "--size", str(size),
             "--store-port", str(self.store.port), "--port", str(listener.address[1]), "--threads", str(threads)],
            env=env) for rank in range(1, size)]
        by_rank = {}
        try:
            for _ in range(1, size):  # each worker says its rank first
                c = listener.accept()
                by_rank[c.recv()] = c
        finally:
            listener.close()
        self.conns = [by_rank[r] for r in range(1, size)]
        for c in self.conns:
            c.send(build)
        torch.set_num_threads(threads)

    def start(self, num_blocks: int) -> None:
        """Tell the workers the pool size and wait until each has its runner."""
        for c in self.conns:
            c.send(num_blocks)
        for rank, c in enumerate(self.conns, 1):
            if not c.poll(START_TIMEOUT):
                raise RuntimeError(f"tensor-parallel rank {rank} did not start within {START_TIMEOUT:g}s")
            kind, msg = c.recv()
            if kind != "ready":
                raise RuntimeError(f"tensor-parallel rank {rank} failed to start: {msg}")

    def _dead(self, rank: int) -> Optional[str]:
        p = self.procs[rank - 1]
        if p.poll() is None:
            return None
        return f"its process (pid {p.pid}) has died (exit code {p.returncode})"

    def _send(self, data: bytes) -> None:
        for rank in range(1, self.size):
            dead = self._dead(rank)
            if dead:
                self.broken = f"tensor-parallel rank {rank} failed: {dead}; the engine cannot go on without it"
                raise RuntimeError(self.broken)
        # Plain pickle: tensors (pixels) travel inline, not as shared-memory handles, which
        # multiprocessing's reducers would make and these processes could not open.
        for c in self.conns:
            c.send_bytes(data)

    def _answers(self) -> dict[int, Optional[str]]:
        import time

        out = {}
        for rank, c in enumerate(self.conns, 1):
            deadline = time.monotonic() + ACK_TIMEOUT
            while True:
                try:
                    if c.poll(0.2):
                        out[rank] = c.recv()
                        break
                except (EOFError, OSError):
                    pass
                dead = self._dead(rank)
                if dead or time.monotonic() > deadline:
                    out[rank] = dead or f"no answer within {ACK_TIMEOUT:g}s"
                    break
        return out

    def close(self, timeout: float = 5.0) -> None:
        for c in self.conns:
            try:
                c.send_bytes(_STOP)
            except (OSError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(timeout)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it did not end; kill it
                p.kill()
                p.wait(timeout)
        for c in self.conns:
            c.close()
        self.conns, self.procs = [], []

    def _alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def start_tp(size: int, build: tuple, shape: tuple[int, int, int], backend: str = "mp") -> Executor:
    """Check ``size`` against the decoder's ``shape`` (``ModelFamily.tp_shape``), then start the
    workers of a ``size``-rank group (``build``: the arguments the model family takes) as
    processes (``backend`` "mp") or Ray actors ("ray")."""
    check_tp(size, *shape)
    if backend == "ray":
        from .ray_executor import RayWorkers

        return RayWorkers(size, build)
    return Workers(size, build)
