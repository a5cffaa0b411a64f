"""Tensor parallelism: ranks as processes, one gloo (CPU) or nccl (CUDA) group, one step input.

``EngineConfig(tp=N)`` runs the model as N ranks. Rank 0 lives in the engine's process: its
runner is the engine's, and the scheduler, block manager, sampler and detokenizer stay there.
Ranks 1..N-1 are worker processes (fresh interpreters: ``python -m seer.engine.tp_worker``, so a
caller's script needs no ``if __name__ == "__main__"`` guard); each builds the same model family with its
``TPGroup``, so its decoder holds only its slices (Megatron-style: q/k/v and gate/up split by
output rows, o and down by input columns with one all-reduce each; KV heads split, or
replicated when there are fewer than N; embeddings, norms and the LM head replicated; a VLM's
vision tower whole on every rank, so each has the features it scatters without a broadcast),
and its own KV pool of its heads. Every step rank 0's runner sends the engine's ``StepInput`` (plain
data, ``step.py``) to each worker through a pipe, every rank runs the forward, and rank 0's
logits are the step's.

The group is a ``ProcessGroupGloo`` made directly from a ``TCPStore`` on 127.0.0.1, not
``init_process_group``: several engines (pipelines) can live in one process.

Faults: a collective waits at most ``COLLECTIVE_TIMEOUT`` seconds; a worker that died is found
before each step and fails it with a message naming it; ``close()`` ends every worker (and
kills what does not end within seconds); a worker whose rank 0 went away (its socket closes)
exits by itself.
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


def _store(port: int = 0):
    """The group's rendezvous on 127.0.0.1: port 0 makes it (rank 0), a port joins it."""
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", port, None, port == 0, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT),
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


def worker_main(argv=None) -> int:
    """A rank > 0 (``python -m seer.engine.tp_worker``): connect to rank 0, build the model family
    with this rank's group, then run every step rank 0 sends until it sends None or goes away."""
    import argparse
    from multiprocessing.connection import Client

    from ..models.base import resolve_device
    from ..models.registry import family_for
    from .runner import ModelRunner

    ap = argparse.ArgumentParser()
    for name in ("--rank", "--size", "--store-port", "--port", "--threads"):
        ap.add_argument(name, type=int, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    conn = Client(("127.0.0.1", a.port), authkey=bytes.fromhex(os.environ.pop(_AUTHKEY_ENV)))
    conn.send(a.rank)
    try:
        path, raw, ecfg, vcfg, tcfg = conn.recv()
        tp = _group(_store(a.store_port), a.rank, a.size, resolve_device(ecfg)[0])
        family = family_for(raw)(path, raw, ecfg, vcfg, tcfg, tp=tp)
        runner = ModelRunner.for_family(family, ecfg, vcfg, conn.recv())
        conn.send(("ready", None))
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, which fails the start
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return 1
    while True:
        try:
            step = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # rank 0 went away
            return 0
        if step is None:
            return 0
        try:
            runner.execute(step)
        except BaseException as e:  # noqa: BLE001 - rank 0's collective times out and fails the step
            log.error("tensor-parallel rank %d: step failed: %s", a.rank, e)


_AUTHKEY_ENV = "SEER_TP_AUTHKEY"


class Workers:
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

    def group(self, device: torch.device) -> TPGroup:
        """Rank 0's group (blocks until every worker has joined); ``device``: the engine config's."""
        return _group(self.store, 0, self.size, device)

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

    def send(self, step) -> None:
        for rank, p in enumerate(self.procs, 1):
            if p.poll() is not None:
                raise RuntimeError(f"tensor-parallel rank {rank} (pid {p.pid}) has died (exit code {p.returncode}); "
                                   "the engine cannot run without it")
        # Plain pickle: tensors (pixels) travel inline, not as shared-memory handles, which
        # multiprocessing's reducers would make and these processes could not open.
        data = pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL)
        for c in self.conns:
            c.send_bytes(data)

    def close(self, timeout: float = 5.0) -> None:
        for c in self.conns:
            try:
                c.send_bytes(pickle.dumps(None))
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

    @property
    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def start_tp(size: int, build: tuple, shape: tuple[int, int, int]) -> Workers:
    """Check ``size`` against the decoder's ``shape`` (``ModelFamily.tp_shape``), then start the
    workers of a ``size``-rank group (``build``: the arguments the model family takes)."""
    check_tp(size, *shape)
    return Workers(size, build)
