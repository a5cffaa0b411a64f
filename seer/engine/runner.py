"""Runs one step: a single forward over all scheduled tokens, packed without padding.

The runner owns the device state: the KV-cache tensors, the gather workspace and
the image-feature cache. It turns a ``StepInput`` (plain data, see ``step.py``) into
tensors, encodes the images the step needs (batched, ``VisionConfig.max_batch_size`` per
forward, each distinct image once thanks to the feature cache keyed by content hash),
scatters their features over the placeholder tokens, runs the model and returns the logits
of the sequences that sample.

Packed order: sequences computing one token (decodes) first, then prefill chunks.

Positions are token indices, except for M-RoPE models (``model.mrope``, Qwen2-VL): there
they are ``[3, T]``, taken from the prompt's precomputed ``mrope_positions`` and, past the
prompt, ``index + rope_delta``. Other models never take that path.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from .. import kernels
from ..layers.attention import AttentionMetadata, PrefillSpan
from .step import ImageSpan, SeqChunk, StepInput


PROMPT_SLICE = 256  # prompt rows whose logits are made at once (prompt logprobs)


@dataclass
class StepOutput:
    """What a step gives back: the logits of the chunks that sample, in chunk order, and the
    prompt logprobs the step's chunks asked for, by request id."""

    logits: torch.Tensor
    # by request id: (logprobs of its prompt rows or None, their logits [rows, vocab] on the CPU or None)
    prompt: dict[int, tuple[Optional[list[dict[int, float]]], Optional[torch.Tensor]]]


@dataclass
class KVSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def bytes_per_block(self, block_size: int) -> int:
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize


class ModelRunner:
    def __init__(self, model, kv: KVSpec, num_blocks: int, block_size: int, device: torch.device,
                 vision_batch_size: int = 8, feature_cache_size: int = 256, sliding_window=None, workers=None,
                 rank: int = 0):
        self.model = model
        self.rank = rank  # tensor-parallel rank: only rank 0's logits are whole (and used)
        self.workers = workers  # tensor-parallel ranks 1.. (``parallel.Executor``): each step goes to them too
        self.kv = kv
        self.block_size = block_size
        self.device = device
        self.vision_batch_size = vision_batch_size
        self.feature_cache_size = feature_cache_size
        self.sliding_window = sliding_window
        shape = (num_blocks, block_size, kv.num_kv_heads, kv.head_dim)
        # torch.empty: on CPU the pages are only touched (and counted in RSS) once used. 4 KB pages, unlike
        # the weights (kernels.huge_page_empty): on 2 MB pages batch-64 decode ran ~25% slower, as
        # attention's strided reads of K and V then fall on the same cache sets.
        self.kv_caches = [(torch.empty(shape, dtype=kv.dtype, device=device),
                           torch.empty(shape, dtype=kv.dtype, device=device)) for _ in range(kv.num_layers)]
        self.block_bytes = kv.bytes_per_block(block_size)
        self._workspace: tuple[torch.Tensor, torch.Tensor] | None = None
        self.features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.feature_hits = 0
        self.feature_misses = 0
        model_dtype = next(model.parameters()).dtype
        self.native_decode = (device.type == "cpu" and model_dtype == torch.float32
                              and kv.dtype in (torch.float32, torch.bfloat16) and kernels.available())
        self.mrope = bool(getattr(model, "mrope", False))
        # Models that mix full and sliding-window layers (Gemma 3) read ``meta.local`` in the latter.
        self.local_window = getattr(model, "local_window", None)

    @classmethod
    def for_family(cls, family, cfg, vcfg, num_blocks: int, workers=None) -> "ModelRunner":
        """The runner of a loaded model family (``cfg``: its EngineConfig, ``vcfg``: VisionConfig)."""
        window = family.model.spec.sliding_window
        window = window if window and window < family.session_len else None  # no context can exceed it
        return cls(family.model, family.kv_spec(), num_blocks, cfg.block_size, family.device,
                   vcfg.max_batch_size, vcfg.feature_cache_size, window, workers, family.tp.rank)

    @property
    def healthy(self) -> bool:
        """False once a tensor-parallel worker has died (the engine then reports itself unhealthy)."""
        return self.workers is None or self.workers.alive

    def close(self) -> None:
        """Give the KV pool back and end the tensor-parallel workers, if any."""
        self.kv_caches = []
        if self.workers is not None:
            self.workers.close()

    # ---- the step -------------------------------------------------------------------
    def execute(self, step: StepInput) -> StepOutput:
        """One forward over ``step``: the logits ``[chunks that sample, vocab]``, in chunk order, and
        any prompt logprobs (with tensor-parallel workers, every rank runs it: ``Executor.run``)."""
        if self.workers is not None:
            return self.workers.run(step, lambda: self._execute(step))
        return self._execute(step)

    @torch.inference_mode()
    def _execute(self, step: StepInput) -> StepOutput:
        self.zero_blocks(step.fresh_blocks)
        dev = self.device
        # One tensor for the tokens, their slots and positions: at batch 1 every torch call made
        # after the weights streamed through the caches costs tens of microseconds.
        n = len(step.input_ids)
        ints = torch.tensor(step.input_ids + step.slot_mapping + ([] if self.mrope else step.positions),
                            dtype=torch.long, device=dev)
        input_ids, slot_mapping = ints[:n], ints[n:2 * n]
        meta = self._metadata(step.chunks, slot_mapping, self.sliding_window)
        if self.local_window:
            meta.local = self._metadata(step.chunks, slot_mapping, self.local_window)
        pos = self._mrope_positions(step.chunks).to(dev) if self.mrope else ints[2 * n:]
        rows = step.sample_rows  # increasing: n of them are every row, in order (a pure decode step)
        if len(rows) == n and not step.images and not step.prompt_rows and not self.mrope:
            logits = self.model.decode_logits(input_ids, pos, self.kv_caches, meta)
            if logits is not None:  # the whole step in one native call
                return StepOutput(logits, {})
        embeds = self._embed(input_ids, step.images)
        hidden = self.model(embeds, pos, self.kv_caches, meta)
        last = hidden if len(rows) == n else hidden.index_select(0, torch.tensor(rows, dtype=torch.long, device=dev))
        logits = self.model.compute_logits(last)
        prompt = {c.request_id: self._prompt_rows(hidden, first, c) for first, c in step.prompt_rows}
        return StepOutput(logits, prompt)

    def _prompt_rows(self, hidden, first: int, chunk: SeqChunk):
        """For the rows from ``first`` on, predicting ``chunk.prompt_targets``: ``{target: logprob,
        top alternatives...}`` each (when ``prompt_top`` is set) and their logits (when
        ``prompt_logits``). The logits are made ``PROMPT_SLICE`` rows at a time, so a long prompt
        never holds more than that many rows of vocabulary-wide logits unless they are asked for."""
        targets, top = chunk.prompt_targets, chunk.prompt_top
        out, kept = ([] if top is not None else None), []
        for a in range(0, len(targets), PROMPT_SLICE):
            logits = self.model.compute_logits(hidden[first + a:first + a + PROMPT_SLICE][:len(targets) - a])
            if self.rank:  # a worker takes part in gathering the logits; rank 0 makes the outputs
                continue
            if chunk.prompt_logits:
                kept.append(logits.cpu())
            if top is None:
                continue
            lp = torch.log_softmax(logits, dim=-1)
            tgt = torch.tensor(targets[a:a + PROMPT_SLICE], device=lp.device)
            own = lp.gather(1, tgt[:, None])[:, 0].tolist()
            tops = lp.topk(top, dim=-1) if top else None
            for i, (t, v) in enumerate(zip(tgt.tolist(), own)):
                d = {t: v}
                if tops is not None:
                    for tv, ti in zip(tops.values[i].tolist(), tops.indices[i].tolist()):
                        d.setdefault(ti, tv)
                out.append(d)
        return out, (torch.cat(kept) if kept else None)

    @staticmethod
    def _mrope_positions(chunks: list[SeqChunk]) -> torch.Tensor:
        """``[3, T]`` M-RoPE positions of the step's tokens (on the CPU)."""
        flat, prompt_parts, row = [], [], 0
        for c in chunks:
            flat.extend(range(c.start + c.rope_delta, c.end + c.rope_delta))
            if c.mrope_positions is not None:
                prompt_parts.append((row, c.mrope_positions))
            row += c.num_tokens
        out = torch.tensor(flat, dtype=torch.long).expand(3, -1).clone()
        for r, p in prompt_parts:
            out[:, r:r + p.shape[1]] = p
        return out

    @torch.inference_mode()
    def zero_blocks(self, blocks: list[int]) -> None:
        if not blocks:
            return
        idx = torch.tensor(blocks, dtype=torch.long, device=self.device)
        for k, v in self.kv_caches:
            k.index_fill_(0, idx, 0)
            v.index_fill_(0, idx, 0)

    # ---- attention metadata ------------------------------------------------------------
    def _metadata(self, chunks: list[SeqChunk], slot_mapping, win) -> AttentionMetadata:
        """Attention metadata of a step for layers with sliding window ``win`` (None: full)."""
        bs, dev = self.block_size, self.device
        meta = AttentionMetadata(slot_mapping=slot_mapping)
        dec = [c for c in chunks if c.num_tokens == 1]
        need = 0
        if dec:
            ctx = [c.end for c in dec]
            nblk = -(-max(ctx) // bs)
            flat = list(ctx)  # the lengths, then the padded block tables: one tensor
            for c in dec:
                table = c.block_table[:nblk]
                flat += table + [0] * (nblk - len(table))
            lens_tables = torch.tensor(flat, dtype=torch.long, device=dev)
            meta.num_decode = len(dec)
            meta.decode_lens = lens_tables[:len(dec)]
            meta.decode_blocks = lens_tables[len(dec):].view(len(dec), nblk)
            if not (self.native_decode and not win):
                j = torch.arange(nblk * bs, device=dev)
                mask = j[None, :] < meta.decode_lens[:, None]
                if win:
                    mask &= j[None, :] > meta.decode_lens[:, None] - 1 - win
                meta.decode_mask = mask[:, None, None, :]
                need = len(dec) * nblk
        row = len(dec)
        for c in chunks:
            if c.num_tokens == 1:
                continue
            start, n = c.start, c.num_tokens
            span = PrefillSpan(row, row + n)
            if start > 0 or (win and n > win) or c.bidirectional:
                qpos = torch.arange(start, start + n, device=dev)[:, None]
                if start > 0:
                    nblk = -(-(start + n) // bs)
                    span.blocks = torch.tensor(c.block_table[:nblk], dtype=torch.long, device=dev)
                    kpos = torch.arange(nblk * bs, device=dev)[None, :]
                    need = max(need, nblk)
                else:
                    kpos = torch.arange(n, device=dev)[None, :]
                mask = kpos <= qpos
                if c.bidirectional:  # OR(causal, same image), as transformers builds Gemma 3's masks
                    image = torch.full((kpos.shape[1],), -1, dtype=torch.long, device=dev)
                    for k, (a, b) in enumerate(c.bidirectional):
                        image[a:b] = k
                    qi, ki = image[start:start + n][:, None], image[None, :]
                    mask |= (qi == ki) & (qi >= 0)
                if win:
                    mask &= kpos > qpos - win
                span.mask = mask[None, None]
            meta.prefills.append(span)
            row += n
        if need:
            meta.workspace = self._get_workspace(need)
        return meta

    def _get_workspace(self, num_blocks: int):
        if self._workspace is None or self._workspace[0].shape[0] < num_blocks:
            n = max(num_blocks, 2 * (self._workspace[0].shape[0] if self._workspace else 0))
            shape = (n, self.block_size, self.kv.num_kv_heads, self.kv.head_dim)
            self._workspace = (torch.empty(shape, dtype=self.kv.dtype, device=self.device),
                               torch.empty(shape, dtype=self.kv.dtype, device=self.device))
        return self._workspace

    # ---- embeddings and images ------------------------------------------------------------
    def _embed(self, input_ids, images: list[ImageSpan]) -> torch.Tensor:
        embeds = self.model.embed(input_ids)
        if not images:
            return embeds
        feats = self._features(images)
        for im in images:
            embeds[im.row:im.row + im.num_rows] = feats[im.hash][im.first_feature:im.first_feature + im.num_rows].to(
                embeds.dtype)
        return embeds

    def _features(self, images: list[ImageSpan]) -> dict[str, torch.Tensor]:
        """Features of each distinct image among ``images``: cached ones reused, the rest encoded in batches."""
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, ImageSpan] = {}
        for im in images:
            if im.hash in found or im.hash in todo:
                continue
            if im.kind == "embeds":
                found[im.hash] = im.data.to(self.device)
            elif im.hash in self.features:
                self.features.move_to_end(im.hash)
                found[im.hash] = self.features[im.hash]
                self.feature_hits += 1
            else:
                todo[im.hash] = im
        # The model batches a chunk as it can (stacked, or patches concatenated): images of
        # different sizes may share a vision forward.
        group = list(todo.values())
        for i in range(0, len(group), self.vision_batch_size):
            chunk = group[i:i + self.vision_batch_size]
            for im, f in zip(chunk, self.model.encode_images([im.data for im in chunk])):
                if f.shape[0] != im.num_features:
                    raise ValueError(f"image encoder gave {f.shape[0]} features for {im.num_features} placeholders")
                found[im.hash] = f
                self._remember(im.hash, f)
            self.feature_misses += len(chunk)
        return found

    def _remember(self, key: str, feats: torch.Tensor) -> None:
        if self.feature_cache_size == 0:
            return
        self.features[key] = feats
        while len(self.features) > self.feature_cache_size:
            self.features.popitem(last=False)
