"""Small native kernels for the CPU path, built on first use with the system C compiler.

- ``paged_decode`` answers one query token per sequence straight from the paged KV cache,
  reading every key and value once, in place.
- ``panel_linear`` is the fp32 matmul, over a weight packed once (``pack_panels``): at one row it
  streams the weight at memory speed, at many it runs near the cores' multiply-add peak (faster
  than BLAS on decoder shapes), and a row's result never depends on the other rows.
- ``int_linear_q8`` and ``int_linear_q4`` multiply by quantised weights
  (``EngineConfig(quantization="int8" | "int4")``) in integer arithmetic: each row of the input
  is rounded to int8 with its own scale, then int8 x uint8 dot products (AVX512-VNNI).
- ``rms_norm``, ``rotary`` and ``silu_mul``: one call each where torch dispatches several operators.
- ``decode_layers``: a whole decode step through a stack of Llama-style layers
  (``seer.layers.decode_stack`` describes them), with the kernels above, in one call.

All run on the threads of ``pool.c`` (``torch.get_num_threads()`` of them). They are built with
``cc -O3 -march=native`` into ``$SEER_CACHE_DIR`` (default ``~/.cache/seer``) the first time
they are needed; where no compiler is found, or ``SEER_NATIVE_KERNELS=0``, ``available()`` is
False and the callers use torch instead, which gives the same results up to float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import torch

log = logging.getLogger("seer.kernels")

_DIR = os.path.dirname(__file__)
_SRCS = [os.path.join(_DIR, f) for f in ("pool.c", "paged_attention.c", "panel_linear.c", "int_linear.c",
                                         "norm_rope.c", "decode_stack.c")]
_HEADERS = [os.path.join(_DIR, f) for f in ("pool.h", "vec.h", "kernels.h")]
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False


def _cache_dir() -> str:
    return os.environ.get("SEER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "seer")


def _build() -> Optional[ctypes.CDLL]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.info("no C compiler found: using the torch attention path")
        return None
    src = b"".join(open(p, "rb").read() for p in _SRCS + _HEADERS)
    out = _compile(cc, ["-O3", "-march=native", "-ffast-math", "-fPIC", "-shared", "-pthread"], src)
    try:
        lib = ctypes.CDLL(out) if out else None
    except OSError as e:
        log.warning("loading %s failed: %s", out, e)
        return None
    if lib is None:
        return None
    fn = lib.seer_paged_decode
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    lib.seer_panel_linear_f32.restype = ctypes.c_int
    lib.seer_panel_linear_f32.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    lib.seer_rms_norm.restype = None
    lib.seer_rms_norm.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    lib.seer_rotary.restype = None
    lib.seer_rotary.argtypes = [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [
        ctypes.c_int]
    lib.seer_silu_mul.restype = None
    lib.seer_silu_mul.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    lib.seer_decode_layers.restype = ctypes.c_int
    lib.seer_decode_layers.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int64] + [ctypes.c_void_p] * 5
    lib.seer_decode_step.restype = ctypes.c_int
    lib.seer_decode_step.argtypes = [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [
        ctypes.c_void_p] * 4
    for fn in (lib.seer_int_linear_q8, lib.seer_int_linear_q4):
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    return lib


def _compile(cc: str, flags: list[str], src: bytes) -> Optional[str]:
    """The kernels' shared library built with ``flags`` (cached by source and flags), or None."""
    key = hashlib.sha256(src + " ".join(flags).encode() + os.uname().machine.encode()).hexdigest()[:16]
    out = os.path.join(_cache_dir(), f"seer_kernels_{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(_cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
    os.close(fd)
    res = subprocess.run([cc, *flags, *_SRCS, "-o", tmp, "-lm"], capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        log.warning("building the native kernels with %s failed:\n%s", " ".join(flags), res.stderr[-2000:])
        return None
    os.replace(tmp, out)  # atomic: concurrent builders never see a partial file
    return out


def available() -> bool:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                if os.environ.get("SEER_NATIVE_KERNELS", "1") != "0":
                    try:
                        _lib = _build()
                    except Exception as e:  # noqa: BLE001 - a missing kernel must never break serving
                        log.warning("native decode kernel unavailable (%s); using the torch path", e)
                _tried = True
    return _lib is not None


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                 context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q ``[B, Hq, D]`` fp32 contiguous; caches ``[N, block_size, Hkv, D]`` fp32 or bf16; block_table ``[B, M]``
    int64; context_lens ``[B]`` int64 -> ``[B, Hq, D]``."""
    B, Hq, D = q.shape
    _, bs, Hkv, _ = k_cache.shape
    out = torch.empty_like(q)
    rc = _lib.seer_paged_decode(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_table.data_ptr(),
                                context_lens.data_ptr(), out.data_ptr(), B, Hq, Hkv, D, bs,
                                block_table.shape[1], scale, torch.get_num_threads(),
                                int(k_cache.dtype == torch.bfloat16))
    if rc != 0:
        raise RuntimeError(f"native decode kernel failed (code {rc})")
    return out


PANEL = 32  # output columns per panel of ``pack_panels``' layout (SEER_PANEL in kernels.h)

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h
_madvise = None


def huge_page_empty(shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor in memory the kernel is asked to back with 2 MB pages
    (``madvise(MADV_HUGEPAGE)``, Linux; elsewhere, or under 2 MB, a plain ``torch.empty``).

    The kernels stream the weights once per step; with 4 KB pages every 4 KB of that stream is a
    TLB miss and a stop for the hardware prefetcher: a one-row step's matmuls read 28 GB/s on 4 KB
    pages, 36 on 2 MB ones (``benchmarks/cpu_matmul.py --against 4k-pages``). Advise before the
    first touch, so the pages fault in huge."""
    global _madvise
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _HUGE_PAGE or not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return torch.empty(shape, dtype=dtype)
    if _madvise is None:
        fn = ctypes.CDLL(None, use_errno=True).madvise
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
        _madvise = fn
    buf = torch.empty(nbytes + _HUGE_PAGE, dtype=torch.uint8)  # room to start on a 2 MB boundary
    start = -buf.data_ptr() % _HUGE_PAGE
    _madvise(buf.data_ptr() + start, nbytes // _HUGE_PAGE * _HUGE_PAGE, _MADV_HUGEPAGE)  # advice only
    return buf[start:start + nbytes].view(dtype).view(shape)


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[N, K]`` in ``panel_linear``'s layout: ``[ceil(N / PANEL), K, PANEL]``, for each
    k the weights of a panel's ``PANEL`` output columns together (zero past column N)."""
    n, k = weight.shape
    pad = -n % PANEL
    w = torch.cat([weight, weight.new_zeros(pad, k)]) if pad else weight
    w = w.reshape(-1, PANEL, k).transpose(1, 2)
    if w.device.type != "cpu":
        return w.contiguous()
    return huge_page_empty(w.shape, w.dtype).copy_(w)


def unpack_panels(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The ``[N, K]`` weight back from ``pack_panels``' layout."""
    return packed.transpose(1, 2).reshape(-1, packed.shape[1])[:n]


def panel_linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """``x @ W.T + bias`` for ``x`` ``[M, K]`` (any M) with ``W`` ``[n, K]`` in ``pack_panels``' layout;
    fp32, CPU, contiguous. A row's result does not depend on the other rows."""
    return _linear(_lib.seer_panel_linear_f32, x, packed, bias, n=n)


# q8's dot products are exact in int32 up to this input width (255 * 127 * K < 2**31).
INT_LINEAR_MAX_K = 65536


def int_linear_q8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor],
                  out_features: int) -> torch.Tensor:
    """``x @ W.T + bias`` with ``x`` ``[M, K]`` fp32 rounded to int8 per row, ``W`` int8 with a scale
    per row, in the kernel's layout (``seer.layers.quant`` writes it; int_linear.c describes it);
    CPU, contiguous; ``K <= INT_LINEAR_MAX_K``."""
    return _linear(_lib.seer_int_linear_q8, x, qweight, bias, scales, n=out_features)


def int_linear_q4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor],
                  out_features: int) -> torch.Tensor:
    """The same over 4-bit weights with a scale per 32 columns; ``K`` a multiple of 32."""
    return _linear(_lib.seer_int_linear_q4, x, qweight, bias, scales, n=out_features)


def _linear(fn, x, weight, bias, *scales, n=None) -> torch.Tensor:
    """One of the tile kernels: ``fn(x, weight, [scales,] bias or NULL, out, M, K, N, threads)``."""
    M, K = x.shape
    N = weight.shape[0] if n is None else n
    out = torch.empty(M, N, dtype=x.dtype)
    rc = fn(x.data_ptr(), weight.data_ptr(), *(s.data_ptr() for s in scales),
            bias.data_ptr() if bias is not None else None, out.data_ptr(), M, K, N, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"native linear kernel failed (code {rc})")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> Optional[torch.Tensor]:
    """``F.rms_norm(x, (D,), weight, eps)`` for fp32 ``x`` on CPU, contiguous or ``[T, D]`` with
    contiguous rows; None where the kernel does not apply."""
    D = x.shape[-1]
    if x.is_contiguous():
        stride = D
    elif x.dim() == 2 and x.stride(1) == 1:
        stride = x.stride(0)
    else:
        return None
    out = torch.empty(x.shape, dtype=x.dtype)
    _lib.seer_rms_norm(x.data_ptr(), stride, weight.data_ptr(), out.data_ptr(), x.numel() // D, D, eps,
                       torch.get_num_threads())
    return out


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Optional[torch.Tensor]:
    """``x * cos + rotate_half(x) * sin`` for ``x`` ``[T, H, D]`` fp32 on CPU with contiguous heads
    (a column slice of a fused projection is fine) and ``cos``/``sin`` ``[T, 1, D]`` contiguous;
    None where the kernel does not apply."""
    T, H, D = x.shape
    if (x.stride(2) != 1 or x.stride(1) != D or D % 2 or cos.shape != (T, 1, D) or sin.shape != (T, 1, D)
            or not cos.is_contiguous() or not sin.is_contiguous() or cos.dtype != x.dtype or sin.dtype != x.dtype):
        return None
    out = torch.empty(T, H, D, dtype=x.dtype)
    _lib.seer_rotary(x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), T, H, D,
                     torch.get_num_threads())
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` for ``gate_up`` ``[T, 2I]`` fp32 on CPU, contiguous (gate the first half)."""
    T, I2 = gate_up.shape
    out = torch.empty(T, I2 // 2, dtype=gate_up.dtype)
    _lib.seer_silu_mul(gate_up.data_ptr(), out.data_ptr(), T, I2 // 2, torch.get_num_threads())
    return out


def decode_layers(layers, nlayers: int, dims, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  meta) -> torch.Tensor:
    """A pure decode step of ``x`` ``[M, hidden]`` through ``nlayers`` layers described by ``layers``
    and ``dims`` (``seer.layers.decode_stack``'s structures); cos/sin ``[M, 1, head_dim]`` fp32;
    ``meta``'s slot mapping, decode blocks and lengths int64. Returns the last layer's output."""
    out = x.clone(memory_format=torch.contiguous_format)  # the kernel writes the layers' output over it
    cos, sin = cos.contiguous(), sin.contiguous()
    rc = _lib.seer_decode_layers(ctypes.addressof(layers), nlayers, ctypes.addressof(dims), out.data_ptr(),
                                 out.shape[0], cos.data_ptr(), sin.data_ptr(), meta.slot_mapping.data_ptr(),
                                 meta.decode_blocks.data_ptr(), meta.decode_lens.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native decode step failed (code {rc})")
    return out


def decode_step(layers, nlayers: int, dims, ends, ids: torch.Tensor, positions: torch.Tensor, meta,
                vocab: int) -> torch.Tensor:
    """``decode_layers`` from token ids to logits: ``ends`` (``seer.layers.decode_stack``) says where
    the embedding, the rotary tables, the final norm and the LM head are; ``ids`` and
    ``positions`` ``[M]`` int64. Returns the logits ``[M, vocab]``."""
    out = torch.empty(ids.shape[0], vocab)
    rc = _lib.seer_decode_step(ctypes.addressof(layers), nlayers, ctypes.addressof(dims), ctypes.addressof(ends),
                               ids.data_ptr(), positions.data_ptr(), ids.shape[0], meta.slot_mapping.data_ptr(),
                               meta.decode_blocks.data_ptr(), meta.decode_lens.data_ptr(), out.data_ptr())
    if rc != 0:
        raise RuntimeError(f"native decode step failed (code {rc})")
    return out
