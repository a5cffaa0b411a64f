"""``GET /metrics``: Prometheus text for one server.

Latencies are observed where the client sees them (on the event loop, as deltas
arrive); counts and gauges are read from the engine at scrape time, so there is one
source of truth for each number. Each server has its own registry.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no *_created series: they are noise for scrapers

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, core):
        self.core = core
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("seer_time_to_first_token_seconds", "Time from submission to the first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("seer_time_per_output_token_seconds",
                              "Mean time between output tokens of a finished request", buckets=_TPOT_BUCKETS,
                              registry=r)
        self.e2e = Histogram("seer_e2e_request_latency_seconds", "Time from submission to the last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.submitted = Counter("seer_requests_submitted", "Engine requests submitted (one per choice)",
                                 registry=r)
        self.aborted = Counter("seer_requests_aborted", "Engine requests aborted because the client left",
                               registry=r)
        self.finished = Counter("seer_requests_finished", "Engine requests finished, by reason", ["reason"],
                                registry=r)
        r.register(_EngineCollector(core))
        self._start: dict[int, float] = {}
        self._first: dict[int, float] = {}

    def on_submit(self, request_ids: list[int]) -> None:
        now = time.perf_counter()
        for rid in request_ids:
            self._start[rid] = now
        self.submitted.inc(len(request_ids))

    def on_delta(self, rid: int, out) -> None:
        now = time.perf_counter()
        if rid not in self._first and out.new_token_ids and rid in self._start:
            self._first[rid] = now
            self.ttft.observe(now - self._start[rid])
        if out.finished:
            start, first = self._start.pop(rid, None), self._first.pop(rid, None)
            self.finished.labels(out.finish_reason or "unknown").inc()
            if start is not None:
                self.e2e.observe(now - start)
            if first is not None and out.num_output_tokens > 1:
                self.tpot.observe((now - first) / (out.num_output_tokens - 1))

    def on_abort(self, request_ids) -> None:
        for rid in request_ids:
            self._start.pop(rid, None)
            self._first.pop(rid, None)
        self.aborted.inc(len(request_ids))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector:
    """Gauges and counters read off the engine at scrape time."""

    def __init__(self, core):
        self.core = core

    def describe(self):
        return []

    def collect(self):
        core = self.core
        pipe = core.pipe
        engine = pipe.engine if pipe is not None else None
        yield _gauge("seer_model_loaded", "1 when the model is loaded and the engine is alive", int(core.healthy))
        yield _gauge("seer_num_requests_active", "HTTP requests accepted and not finished", core.active)
        yield _gauge("seer_num_requests_queued", "sequences of HTTP requests with no token yet (the bound for 503s)",
                     core.queued)
        if engine is None:
            return
        st = engine.snapshot()
        yield _gauge("seer_num_requests_running", "Sequences in the running batch", st.running)
        yield _gauge("seer_num_requests_waiting", "Sequences waiting to be scheduled", st.waiting)
        yield _gauge("seer_kv_cache_usage_perc", "Share of KV-cache blocks held by requests (0-1)",
                     st.blocks_used / st.blocks_total)
        yield _gauge("seer_kv_cache_blocks_used", "KV-cache blocks held by requests", st.blocks_used)
        yield _gauge("seer_kv_cache_blocks_total", "KV-cache blocks in the pool", st.blocks_total)
        yield _gauge("seer_kv_cache_blocks_touched", "KV-cache blocks that have held tokens at least once "
                     "(on CPU the pool's memory is resident only for these)", st.blocks_touched)
        yield _gauge("seer_kv_cache_block_bytes", "Bytes of one KV-cache block (all layers, keys and values)",
                     st.block_bytes)
        yield _counter("seer_prompt_tokens", "Prompt tokens submitted", st.prompt_tokens)
        yield _counter("seer_generation_tokens", "Tokens generated", st.generation_tokens)
        yield _counter("seer_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                       st.prefix_hit_tokens)
        yield _counter("seer_image_cache_hits", "Images whose features came from the feature cache",
                       st.image_cache_hits)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c
