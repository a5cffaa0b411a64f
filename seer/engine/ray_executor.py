"""Tensor-parallel ranks 1..N-1 as Ray actors (``distributed_executor_backend="ray"``).

The same ``parallel.Rank`` as a worker process, placed by Ray: on this machine or, in a Ray
cluster (``ray start --head`` here, ``ray start --address=...`` on the others), on any node
with the CPUs (or GPUs) it asks for. Rank 0 stays in the engine's process (the Ray driver)
and hosts the group's TCPStore; the actors reach it at this node's IP address. Every node
needs seer installed and the model folder at the same path.

Ray is optional (``pip install 'seer[ray]'``). If this process has not connected to Ray, the
first engine does ``ray.init()``, which joins the cluster of this machine if one runs (or
``RAY_ADDRESS``), else starts a local one.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .parallel import ACK_TIMEOUT, START_TIMEOUT, Executor, Rank, _store


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ValueError("distributed_executor_backend='ray' needs Ray: pip install 'seer[ray]' "
                         "(or pip install ray); the default backend 'mp' needs nothing") from e
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    return ray


class RayWorkers(Executor):
    def __init__(self, size: int, build: tuple):
        ray = self.ray = _ray()
        self.size = size
        cpus = ray.available_resources().get("CPU", 1.0)
        threads = max(1, int(cpus) // size)
        gpus = 1 if build[2].device == "cuda" else 0
        self.store = _store()
        host = ray.util.get_node_ip_address()
        actor = ray.remote(num_cpus=threads, num_gpus=gpus)(Rank)
        self.actors = [actor.remote(rank, size, host, self.store.port, build, threads) for rank in range(1, size)]
        self.pending: list = []
        self._pids: list[int] = []
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))

    def start(self, num_blocks: int) -> None:
        refs = [a.start.remote(num_blocks) for a in self.actors]
        for rank, ref in enumerate(refs, 1):
            try:
                self._pids.append(self.ray.get(ref, timeout=START_TIMEOUT))
            except Exception as e:  # noqa: BLE001 - GetTimeoutError, RayActorError, RayTaskError
                raise RuntimeError(f"tensor-parallel rank {rank} (Ray actor) failed to start: "
                                   f"{type(e).__name__}: {e}") from e

    def _send(self, data: bytes) -> None:
        ref = self.ray.put(data) if len(data) > 1 << 20 else data
        self.pending = [a.execute.remote(ref) for a in self.actors]

    def _answers(self) -> dict[int, Optional[str]]:
        out = {}
        for rank, ref in enumerate(self.pending, 1):
            try:
                out[rank] = self.ray.get(ref, timeout=ACK_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - the actor died (RayActorError) or did not answer
                out[rank] = f"its Ray actor failed: {type(e).__name__}: {e}"
        self.pending = []
        return out

    def _alive(self) -> bool:
        return True  # a dead actor shows in the next step's answers

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self.pending = [], []

    @property
    def pids(self) -> list[int]:
        return list(self._pids)
