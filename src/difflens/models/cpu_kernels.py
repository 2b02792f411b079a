"""A decode step's attention for a CPU with AVX-512: one C++ kernel, built on this machine on first use.

In a decode step every row attends with one query per head to its whole KV cache. As two batched
matmuls (:func:`difflens.models.decoding.decode_attention`) that is 2 × rows × key/value heads small
products a layer, and ATen's BLAS spends about a microsecond on each: on 2 AMD Zen 5 cores they read
the cache at 10–15 GB/s, and attention is a quarter of a steering search round (``bench/floor.py
--stages decode``). :func:`decode_attention_kernel` computes the same ``softmax(q·Kᵀ·scale + mask)·V``
in one pass per (row, key/value head): the head's query group against each key, the softmax with a
vectorised ``exp`` (a Cephes-style polynomial to about 1 ulp, ``vscalefps`` for the power of two), then
the values, with the query group's outputs kept in registers; the same caches read at 22–29 GB/s
(at 30–225 rows × 80–160 positions, cold caches) and 68–77 GB/s with warm ones.

The kernel is compiled with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and ninja,
a pip dependency) into ``$DIFFLENS_HOME/kernels/`` under a hash of its source, the torch version
and this CPU, once per machine (about 20 s on 2 cores; loading it after that takes well under a
second). It serves float32 heads of 64 or 128 dims with up to 8 queries per key/value head; any
other call, a CPU without AVX-512, a missing compiler, a failed build, or ``DIFFLENS_CPU_KERNELS=0``
leaves attention to the matmuls. Its outputs differ from theirs by float rounding (a few 1e-7).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["HEAD_DIMS", "MAX_GROUP", "cpu_supports", "decode_attention_kernel", "kernel_fits"]

HEAD_DIMS = (64, 128)
MAX_GROUP = 8

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <limits>
#include <vector>

namespace {

constexpr int64_t PREFETCH = 8;  // keys ahead

inline __m512 exp512(__m512 x) {
  // exp(x) = 2^n * p(r), r = x - n ln 2 (two-part ln 2); p: Cephes expf's polynomial; scalef: 2^n
  x = _mm512_max_ps(x, _mm512_set1_ps(-103.f));  // -inf (masked) and NaN -> exp -> 0
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// q [B, H*G, 1, D] contiguous; k, v [B, H, L, D] with unit stride in D; mask: [Bm, L] (Bm 1 or B) additive
// float, or undefined; out [B, H*G, 1, D]
template <int D, int G>
void attend(const float* qp, const float* kp, const float* vp, const float* mp, float* op, int64_t B, int64_t H,
            int64_t L, const int64_t* ks, const int64_t* vs, int64_t ms0, float scale) {
  constexpr int C = D / 16;
  const int64_t Lp = (L + 15) / 16 * 16;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(G * Lp);
    float* s = buf.data();
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* kb = kp + b * ks[0] + h * ks[1];
      const float* vb = vp + b * vs[0] + h * vs[1];
      const float* qb = qp + (b * H + h) * G * D;
      float* ob = op + (b * H + h) * G * D;
      const float* mb = mp ? mp + b * ms0 : nullptr;
      __m512 q[G][C];
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < C; ++c) q[g][c] = _mm512_mul_ps(_mm512_loadu_ps(qb + g * D + 16 * c), _mm512_set1_ps(scale));
      for (int64_t l = 0; l < L; ++l) {
        const float* kr = kb + l * ks[2];
        // prefetch the key PREFETCH rows ahead, and this row's value for the p.V pass below: two
        // streams in flight instead of one (past the last key it touches the cache's unused room or
        // beyond; a prefetch never faults)
        const float* kn = kr + PREFETCH * ks[2];
        const float* vn = vb + l * vs[2];
        for (int c = 0; c < C; ++c) {
          _mm_prefetch(reinterpret_cast<const char*>(kn + 16 * c), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(vn + 16 * c), _MM_HINT_T0);
        }
        __m512 kv[C];
        for (int c = 0; c < C; ++c) kv[c] = _mm512_loadu_ps(kr + 16 * c);
        const float m = mb ? mb[l] : 0.f;
        for (int g = 0; g < G; ++g) {
          __m512 a = _mm512_mul_ps(q[g][0], kv[0]);
          for (int c = 1; c < C; ++c) a = _mm512_fmadd_ps(q[g][c], kv[c], a);
          s[g * Lp + l] = _mm512_reduce_add_ps(a) + m;
        }
      }
      float inv[G];
      for (int g = 0; g < G; ++g) {
        float* sg = s + g * Lp;
        for (int64_t l = L; l < Lp; ++l) sg[l] = -std::numeric_limits<float>::infinity();
        __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        for (int64_t l = 0; l < Lp; l += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sg + l));
        const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t l = 0; l < Lp; l += 16) {
          const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sg + l), top));
          _mm512_storeu_ps(sg + l, e);
          sum = _mm512_add_ps(sum, e);
        }
        inv[g] = 1.f / _mm512_reduce_add_ps(sum);
      }
      __m512 o[G][C];
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < C; ++c) o[g][c] = _mm512_setzero_ps();
      for (int64_t l = 0; l < L; ++l) {
        const float* vr = vb + l * vs[2];
        __m512 vv[C];
        for (int c = 0; c < C; ++c) vv[c] = _mm512_loadu_ps(vr + 16 * c);
        for (int g = 0; g < G; ++g) {
          const __m512 p = _mm512_set1_ps(s[g * Lp + l]);
          for (int c = 0; c < C; ++c) o[g][c] = _mm512_fmadd_ps(p, vv[c], o[g][c]);
        }
      }
      for (int g = 0; g < G; ++g) {
        const __m512 iv = _mm512_set1_ps(inv[g]);
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(ob + g * D + 16 * c, _mm512_mul_ps(o[g][c], iv));
      }
    }
  });
}

template <int D>
void by_group(int64_t G, const float* qp, const float* kp, const float* vp, const float* mp, float* op, int64_t B,
              int64_t H, int64_t L, const int64_t* ks, const int64_t* vs, int64_t ms0, float scale) {
  switch (G) {
    case 1: attend<D, 1>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 2: attend<D, 2>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 3: attend<D, 3>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 4: attend<D, 4>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 5: attend<D, 5>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 6: attend<D, 6>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 7: attend<D, 7>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    case 8: attend<D, 8>(qp, kp, vp, mp, op, B, H, L, ks, vs, ms0, scale); break;
    default: TORCH_CHECK(false, "decode attention kernel: ", G, " queries per key/value head (at most 8)");
  }
}

}  // namespace

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k.dtype() == torch::kFloat32 && v.dtype() == torch::kFloat32,
              "decode attention kernel: float32 only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "decode attention kernel: shapes");
  const int64_t B = q.size(0), H = k.size(1), L = k.size(2), D = q.size(3);
  TORCH_CHECK(q.size(1) % H == 0 && k.size(0) == B && v.size(0) == B && v.size(1) == H && v.size(2) == L
              && k.size(3) == D && v.size(3) == D && k.stride(3) == 1 && v.stride(3) == 1 && L > 0,
              "decode attention kernel: shapes");
  const int64_t G = q.size(1) / H;
  auto qc = q.contiguous();
  auto out = torch::empty({B, H * G, 1, D}, q.options());
  const float* mp = nullptr;
  int64_t ms0 = 0;
  torch::Tensor mc;
  if (mask.defined() && mask.numel() > 0) {
    TORCH_CHECK(mask.dtype() == torch::kFloat32 && mask.dim() == 2 && mask.size(1) == L
                && (mask.size(0) == B || mask.size(0) == 1), "decode attention kernel: mask");
    mc = mask.contiguous();
    mp = mc.data_ptr<float>();
    ms0 = mask.size(0) == 1 ? 0 : L;
  }
  const int64_t ks[3] = {k.stride(0), k.stride(1), k.stride(2)};
  const int64_t vs[3] = {v.stride(0), v.stride(1), v.stride(2)};
  const float* qp = qc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (D == 64) by_group<64>(G, qp, k.data_ptr<float>(), v.data_ptr<float>(), mp, op, B, H, L, ks, vs, ms0, (float)scale);
  else if (D == 128) by_group<128>(G, qp, k.data_ptr<float>(), v.data_ptr<float>(), mp, op, B, H, L, ks, vs, ms0, (float)scale);
  else TORCH_CHECK(false, "decode attention kernel: head size ", D, " (64 or 128)");
  return out;
}
"""

_LOCK = threading.Lock()
_KERNEL: list[Any] = []  # [] not tried yet; [None] unavailable; [fn] built


def _cpu_flags() -> str | None:
    """The ``flags`` line of ``/proc/cpuinfo`` ("" without one; None where it cannot be read)."""
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return None


def cpu_supports() -> bool:
    """An x86-64 Linux CPU with AVX-512F (``/proc/cpuinfo``) and a C++ compiler on the path."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = _cpu_flags()
    return flags is not None and "avx512f" in flags.split() and shutil.which(os.environ.get("CXX", "c++")) is not None


def kernel_fits(head_dim: int, group: int) -> bool:
    """Whether the kernel serves heads of ``head_dim`` with ``group`` queries per key/value head."""
    return head_dim in HEAD_DIMS and 1 <= group <= MAX_GROUP


def _build_dir() -> Path:
    from ..rundir.layout import Home

    flags = _cpu_flags()
    cpu = platform.processor() if flags is None else flags
    key = hashlib.sha256("\n".join([_SOURCE, torch.__version__, cpu, sys.version]).encode()).hexdigest()[:16]
    return Home().kernel_build(f"decode_attention-{key}")


def _ninja_on_path() -> None:
    """torch builds with the ``ninja`` on ``PATH``: where there is none, the pip package's (a
    dependency; its directory is not on ``PATH`` when difflens runs as ``.venv/bin/difflens``)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = str(ninja.BIN_DIR) + os.pathsep + os.environ.get("PATH", "")


def decode_attention_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled kernel (``fn(q, k, v, mask, scale)``, see the module docstring), built on first
    call in this process (from ``$DIFFLENS_HOME/kernels/`` when built before); None where it cannot
    run (announced once on stderr when a build fails)."""
    if _KERNEL:
        return _KERNEL[0]
    with _LOCK:
        if _KERNEL:
            return _KERNEL[0]
        fn = None
        if os.environ.get("DIFFLENS_CPU_KERNELS", "1").strip() != "0" and cpu_supports():
            path = _build_dir()
            fresh = not any(path.glob("*.so"))
            if fresh:
                print("difflens: building the CPU decode-attention kernel for this machine (once, about 20 s; "
                      "DIFFLENS_CPU_KERNELS=0 skips it)", file=sys.stderr, flush=True)
            try:
                from torch.utils.cpp_extension import load_inline

                _ninja_on_path()

                mod = load_inline("difflens_decode_attention", cpp_sources=_SOURCE, functions=["decode_attention"],
                                  extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                  build_directory=str(path), verbose=False)
                fn = mod.decode_attention
            except Exception as e:  # no ninja, a compiler error, a linker error: the matmuls serve
                print(f"difflens: the CPU decode-attention kernel is unavailable ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); attention uses matmuls",
                      file=sys.stderr, flush=True)
        _KERNEL.append(fn)
        return fn
