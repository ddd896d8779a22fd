"""A compiled scoring pass for :class:`~t2n_quant.calibration.mse.BlockFit`, bit for bit its
eager torch path.

Scoring a candidate in eager torch costs about 8 passes over the blocks (codes in 3-5 ops,
the residual, two norms); this C loop takes them in one: per block, the codes ``u`` (less
the zero point), the residual ``x - u * scale``, ``sum u*u`` and ``sum r*r``, each computed
as the torch ops compute it:

- the codes with the codec's own float ops, in its order (``q4_0``: ``x * inv + 8.5``,
  clamp, floor, ``- 8``; ``symmetric``: ``x * inv``, round half to even, clamp;
  ``minmax``: ``x * inv + zero``, round, clamp, ``- zero``), never fused into an FMA;
- the residual as ``torch.addcmul`` takes it on CPU, one FMA ``fma(-u, scale, x)``;
- each sum as ``torch.linalg.vector_norm`` over the last dim takes it (8 float lanes
  ``acc + v * v``, the lanes added in order, then ``sqrt``), then squared, as
  :func:`~t2n_quant.calibration.mse.squared_norm` does.

So the parameters a calibration picks are the same with or without it (tests compare both
paths, and each process checks it on a probe before use). It is compiled on first use, on
x86-64, with the system C compiler (``cc``, or ``$CC``) into a
cache folder (``$T2N_CACHE_DIR``, else ``$XDG_CACHE_HOME/t2n`` or ``~/.cache/t2n``) and
loaded with :mod:`ctypes`; without a compiler, or with ``T2N_FUSED=0``, calibrations use the
eager path (logged once). It takes float32 CPU blocks whose rows are a multiple of 8 values,
unweighted, for the ``q4_0``, ``symmetric`` and ``minmax`` codecs; anything else is eager.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.codecs.masks import reciprocal_or_zero
from t2n_quant.codecs.minmax import MinMaxCodec
from t2n_quant.codecs.q4_0 import Q4_0Codec
from t2n_quant.codecs.symmetric import SymmetricCodec

logger = logging.getLogger(__name__)

#: the codes each codec kind computes (the values of ``KIND``)
Q4_0, SYMMETRIC, MINMAX = 0, 1, 2
#: torch's last-dim norm adds 8 float lanes; rows of other lengths stay eager
LANES = 8

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Rows of k (a multiple of 8) values; see t2n_quant/calibration/fused.py. Each op is the
   one torch's CPU kernels apply, in their order: clamp is max(lo, t) then min(hi, .) (as
   torch's vectorized clamp), the residual one fused multiply-add, the sums 8 lanes. */

static inline float finish(const float *acc) {
    float b = acc[0];
    for (int j = 1; j < 8; j++) b = b + acc[j];
    float s = sqrtf(b);
    return s * s;
}

static inline float clampf(float t, float lo, float hi) {
    t = lo > t ? lo : t;
    return hi < t ? hi : t;
}

static inline float code_of(int kind, float x, float inv, float z, float lo, float hi) {
    float t = x * inv;
    if (kind == 0) return floorf(clampf(t + 8.5f, 0.0f, 15.0f)) - 8.0f;  /* q4_0 */
    if (kind == 1) return clampf(nearbyintf(t), lo, hi);                /* symmetric */
    return clampf(nearbyintf(t + z), lo, hi) - z;                       /* minmax */
}

/* the values of the residual over a threshold, collected in order (see t2n_score) */
typedef struct {
    float t;
    int64_t cap, m, row;
    float *r, *u;
    int64_t *rows;
} taken_t;

static inline void keep(taken_t *c, float r, float u) {
    if (c->m < 0) return;
    if (c->m >= c->cap) { c->m = -1; return; }
    c->r[c->m] = r;
    if (c->u) c->u[c->m] = u;
    c->rows[c->m++] = c->row;
}

static void row_scalar(const float *x, int64_t k, int kind, float iv, float s, float z,
                       float lo, float hi, float *u_out, float *r_out, float *acc_r,
                       float *acc_u, taken_t *c) {
    for (int64_t d = 0; d < k; d += 8) {
        for (int j = 0; j < 8; j++) {
            float u = code_of(kind, x[d + j], iv, z, lo, hi);
            float r = fmaf(-u, s, x[d + j]);
            if (c && c->m >= 0 && fabsf(r) > c->t) keep(c, r, u);
            acc_r[j] = acc_r[j] + r * r;
            acc_u[j] = acc_u[j] + u * u;
            if (u_out) u_out[d + j] = u;
            if (r_out) r_out[d + j] = r;
        }
    }
}

#ifdef __AVX2__
/* per 8-lane mask, the lanes set, first: a permutation that packs them */
static int32_t PACK[256][8];
__attribute__((constructor)) static void init_pack(void) {
    for (int b = 0; b < 256; b++) {
        int n = 0;
        for (int j = 0; j < 8; j++) if (b & (1 << j)) PACK[b][n++] = j;
        while (n < 8) PACK[b][n++] = 0;
    }
}

#define ROUND_EVEN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static void row_avx2(const float *x, int64_t k, int kind, float iv, float s, float z,
                     float lo, float hi, float *u_out, float *r_out, float *acc_r,
                     float *acc_u, taken_t *c) {
    const __m256 sign = _mm256_set1_ps(-0.0f), vt = _mm256_set1_ps(c ? c->t : 0.0f);
    const __m256 vi = _mm256_set1_ps(iv), vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    const __m256 half8 = _mm256_set1_ps(8.5f), eight = _mm256_set1_ps(8.0f);
    __m256 ar = _mm256_setzero_ps(), au = _mm256_setzero_ps();
    for (int64_t d = 0; d < k; d += 8) {
        __m256 xv = _mm256_loadu_ps(x + d);
        __m256 t = _mm256_mul_ps(xv, vi), u;
        if (kind == 0) {
            t = _mm256_add_ps(t, half8);
            t = _mm256_min_ps(vhi, _mm256_max_ps(vlo, t));
            u = _mm256_sub_ps(_mm256_floor_ps(t), eight);
        } else if (kind == 1) {
            t = _mm256_round_ps(t, ROUND_EVEN);
            u = _mm256_min_ps(vhi, _mm256_max_ps(vlo, t));
        } else {
            t = _mm256_round_ps(_mm256_add_ps(t, vz), ROUND_EVEN);
            u = _mm256_sub_ps(_mm256_min_ps(vhi, _mm256_max_ps(vlo, t)), vz);
        }
        __m256 r = _mm256_fnmadd_ps(u, vs, xv);
        if (c && c->m >= 0) {
            __m256 over = _mm256_cmp_ps(_mm256_andnot_ps(sign, r), vt, _CMP_GT_OQ);
            unsigned bits = (unsigned)_mm256_movemask_ps(over);
            if (bits && c->m + 8 <= c->cap) {  /* packed: 8 written, popcount kept */
                __m256i pack = _mm256_loadu_si256((const __m256i *)PACK[bits]);
                __m256i row = _mm256_set1_epi64x(c->row);
                _mm256_storeu_ps(c->r + c->m, _mm256_permutevar8x32_ps(r, pack));
                if (c->u) _mm256_storeu_ps(c->u + c->m, _mm256_permutevar8x32_ps(u, pack));
                _mm256_storeu_si256((__m256i *)(c->rows + c->m), row);
                _mm256_storeu_si256((__m256i *)(c->rows + c->m + 4), row);
                c->m += __builtin_popcount(bits);
            } else if (bits) {
                float rb[8], ub[8];
                _mm256_storeu_ps(rb, r);
                _mm256_storeu_ps(ub, u);
                for (; bits; bits &= bits - 1) {
                    int j = __builtin_ctz(bits);
                    keep(c, rb[j], ub[j]);
                }
            }
        }
        ar = _mm256_add_ps(ar, _mm256_mul_ps(r, r));
        au = _mm256_add_ps(au, _mm256_mul_ps(u, u));
        if (u_out) _mm256_storeu_ps(u_out + d, u);
        if (r_out) _mm256_storeu_ps(r_out + d, r);
    }
    _mm256_storeu_ps(acc_r, ar);
    _mm256_storeu_ps(acc_u, au);
}
#endif

/* t >= 0: also the residual's values with |r| > t, in order, into r_t, with their codes
   (into u_t, if given) and rows, at most cap of them; returns their count, -1 past cap */
#define SCORE_ARGS const float *x, int64_t n, int64_t k, int kind, const float *inv, \
    const float *scale, const float *zero, float lo, float hi, float *u_out, float *r_out, \
    float *err, float *suu, float t, int64_t cap, float *r_t, float *u_t, int64_t *rows_t
#ifdef __AVX2__
#define ROW row_avx2
#else
#define ROW row_scalar
#endif
#define SCORE_BODY(row_fn) \
    if (kind == 0) { lo = 0.0f; hi = 15.0f; } \
    taken_t taken = {t, cap, 0, 0, r_t, u_t, rows_t}; \
    taken_t *c = t >= 0.0f ? &taken : 0; \
    for (int64_t i = 0; i < n; i++) { \
        float acc_r[8] = {0}, acc_u[8] = {0}; \
        float z = zero ? zero[i] : 0.0f; \
        float *uo = u_out ? u_out + i * k : 0, *ro = r_out ? r_out + i * k : 0; \
        taken.row = i; \
        row_fn(x + i * k, k, kind, inv[i], scale[i], z, lo, hi, uo, ro, acc_r, acc_u, c); \
        err[i] = finish(acc_r); \
        if (suu) suu[i] = finish(acc_u); \
    } \
    return taken.m;

int64_t t2n_score(SCORE_ARGS) { SCORE_BODY(ROW) }

/* the portable loop, for the tests: the same results as the vector one */
int64_t t2n_score_scalar(SCORE_ARGS) { SCORE_BODY(row_scalar) }

"""


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64"):
        capability = torch.backends.cpu.get_cpu_capability()
        if capability in ("AVX2", "AVX512"):
            flags += ["-mavx2", "-mfma"]
    return flags


def _cache_dir() -> Path:
    given = os.environ.get("T2N_CACHE_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "t2n"


def _compile() -> ctypes.CDLL | None:
    """The kernel library, from the cache or compiled into it; ``None`` (logged) if no C
    compiler works here."""
    given = os.environ.get("CC")
    compiler = shlex.split(given) if given else [shutil.which("cc") or shutil.which("gcc") or ""]
    if not compiler[0]:
        logger.info("no C compiler (cc / $CC): mse / hqq score candidates with eager torch "
                    "ops (same parameters, about 1.5-2x slower)")  # fmt: skip
        return None
    flags = _flags()
    key = hashlib.sha256("\0".join([SOURCE, *compiler, *flags, platform.machine()]).encode())
    name = f"t2n_score_{key.hexdigest()[:16]}.so"
    try:
        target = _cache_dir() / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # an unwritable home: this user's folder in the temp dir
            target = Path(tempfile.gettempdir()) / f"t2n-{os.getuid()}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src = Path(tmp) / "t2n_score.c"
                src.write_text(SOURCE)
                built = Path(tmp) / name
                subprocess.run(
                    [*compiler, *flags, str(src), "-o", str(built), "-lm"],
                    check=True, capture_output=True, timeout=120,
                )  # fmt: skip
                os.replace(built, target)  # atomic: a concurrent build finds a whole file
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        logger.info("could not build the scoring kernel with %s (%s %s): mse / hqq score "
                    "candidates with eager torch ops (same parameters, slower)", compiler[0], e,
                    detail.decode(errors="replace")[-500:])  # fmt: skip
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    f32 = ctypes.c_float
    for fn in (lib.t2n_score, lib.t2n_score_scalar):
        fn.restype = i64
        fn.argtypes = [p, i64, i64, ctypes.c_int, p, p, p, f32, f32, *[p] * 4, f32, i64, p, p, p]
    return lib


_lock = threading.Lock()
_state: dict[str, ctypes.CDLL | None] = {}


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, built once per process; ``None`` when unavailable or disabled
    (``T2N_FUSED=0``)."""
    if os.environ.get("T2N_FUSED", "1") == "0":
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                lib = _compile() if platform.machine() in ("x86_64", "AMD64") else None
                if lib is not None and not _agrees_with_torch(lib):
                    lib = None
                _state["lib"] = lib
    return _state["lib"]


def _agrees_with_torch(lib: ctypes.CDLL) -> bool:
    """Whether the kernel gives the eager ops' results bit for bit here, on a probe of every
    kind (odd rows, ties, zeros, clipping): they are torch's CPU kernels' own choices (lanes,
    FMA), which another torch build may make otherwise; if not, the eager path is used."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 64, generator=g) * torch.rand(37, 1, generator=g) * 4
    x[1], x[2, ::2], x[3] = 0.0, 1.5, torch.arange(64).float() / 2 - 16
    for codec in (Q4_0Codec(), SymmetricCodec(4, 32), MinMaxCodec(3, 64), SymmetricCodec(8)):
        blocks = x.reshape(-1, codec.block_size(64))
        lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        scale = (hi - lo).div_(codec.qmax).mul_(0.8).clamp_(min=1e-3)
        zero = lo.neg().div_(scale).add_(0.3) if codec.has_zero else None
        params = QParams(-scale if type(codec) is Q4_0Codec else scale, zero)
        stored = codec.store(params)
        z = None if stored.zero is None else stored.zero.float()
        u = codec.float_codes(blocks, params)
        if z is not None:
            u.sub_(z)
        r = torch.addcmul(blocks, u, stored.scale.float(), value=-1.0)
        want = [torch.linalg.vector_norm(t, dim=-1, keepdim=True).square_() for t in (r, u)]
        got_u, got_r = torch.empty_like(blocks), torch.empty_like(blocks)
        inv = reciprocal(codec, params, stored)
        taken, eager = Taken(0.3 * float(scale.mean()), 10**6, True), Taken(0.0, 10**6, True)
        eager.threshold = taken.threshold
        got = score(codec, blocks, inv, stored.scale.float(), z, got_u, got_r, True, lib=lib,
                    taken=taken)  # fmt: skip
        eager.take_eager(r, u)
        pairs = [(got[0], want[0]), (got[1], want[1]), (got_u, u), (got_r, r)]
        assert taken.values is not None and eager.values is not None
        pairs += list(zip(taken.values, eager.values, strict=True))  # type: ignore[arg-type]
        if not all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in pairs):
            logger.warning(
                "the compiled mse / hqq scoring pass differs from this torch build's CPU ops "
                "(%s): using the eager ops (same parameters, slower)",
                codec.spec,
            )
            return False
    return True


def kind_of(codec: Codec) -> tuple[int, float, float] | None:
    """``(kind, lo, hi)`` of the codes the kernel computes for ``codec`` (the clamp bounds
    of ``symmetric`` / ``minmax``), or ``None`` for a codec it does not know (exact classes
    only: a subclass may compute its codes otherwise)."""
    if type(codec) is Q4_0Codec:
        return Q4_0, 0.0, 15.0
    if type(codec) is SymmetricCodec:
        low = -float(codec.offset)
        return SYMMETRIC, low, low + codec.qmax
    if type(codec) is MinMaxCodec:
        return MINMAX, 0.0, float(codec.qmax)
    return None


def reciprocal(codec: Codec, params: QParams, stored: QParams) -> torch.Tensor:
    """The per-block factor ``codec`` multiplies the blocks by for its codes: ``1 / scale``
    (0 where the scale is 0) of the stored scale, of the float32 one for ``q4_0`` (ggml's
    rule, :meth:`Q4_0Codec.float_codes`)."""
    scale = params.scale if type(codec) is Q4_0Codec else stored.scale
    return reciprocal_or_zero(scale.float())


def usable(codec: Codec, blocks: torch.Tensor) -> bool:
    """Whether :func:`score` can take ``blocks`` of ``codec`` (and the kernel is built)."""
    return (
        kind_of(codec) is not None
        and blocks.dtype == torch.float32
        and blocks.device.type == "cpu"
        and blocks.dim() == 2
        and blocks.shape[1] % LANES == 0
        and blocks.is_contiguous()
        and kernel() is not None
    )


def _ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


def score(
    codec: Codec,
    blocks: torch.Tensor,
    inv: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    u_out: torch.Tensor | None,
    r_out: torch.Tensor | None,
    with_suu: bool,
    portable: bool = False,
    lib: ctypes.CDLL | None = None,
    taken: Taken | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per block ``(sum r*r, sum u*u)`` (columns; the second ``None`` without ``with_suu``),
    writing the codes less the zero point into ``u_out`` and the residual into ``r_out``
    when given. ``inv`` is the reciprocal the codec multiplies by, ``scale`` / ``zero`` the
    stored parameters as float32 (see the module docstring); :func:`usable` must hold.
    ``portable`` takes the plain C loop instead of the AVX2 one (for the tests); ``lib``,
    a library other than :func:`kernel`'s (its check). ``taken``: also collect the
    residual's values over its threshold, as :func:`over_eager` (in the same pass)."""
    lib = kernel() if lib is None else lib
    found = kind_of(codec)
    assert lib is not None and found is not None
    kind, lo, hi = found
    n, k = blocks.shape
    err = torch.empty(n, 1)
    suu = torch.empty(n, 1) if with_suu else None
    cols = [c.contiguous() for c in (inv, scale)]
    z = None if zero is None else zero.contiguous()
    t, cap, r_t, u_t, rows_t = -1.0, 0, None, None, None
    if taken is not None:
        t, cap = taken.threshold, min(taken.cap, n * k)
        r_t, rows_t = torch.empty(cap), torch.empty(cap, dtype=torch.int64)
        u_t = torch.empty(cap) if taken.with_u else None
    m = (lib.t2n_score_scalar if portable else lib.t2n_score)(
        _ptr(blocks), n, k, kind, _ptr(cols[0]), _ptr(cols[1]), _ptr(z), lo, hi,
        _ptr(u_out), _ptr(r_out), _ptr(err), _ptr(suu), t, cap, _ptr(r_t), _ptr(u_t),
        None if rows_t is None else rows_t.data_ptr(),
    )  # fmt: skip
    if taken is not None:
        taken.fill(None if m < 0 else (r_t[:m], None if u_t is None else u_t[:m], rows_t[:m]))  # type: ignore[index]
    return err, suu


@dataclass
class Taken:
    """What a score collects besides (:func:`score`, :func:`over_eager`): the residual's
    values with ``|r| > threshold``, in order, at most ``cap`` of them, with their codes
    (``with_u``) and rows; ``values`` is ``None`` past ``cap``."""

    threshold: float
    cap: int
    with_u: bool
    values: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    def fill(self, values: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None) -> None:
        self.values = values

    def take_eager(self, r: torch.Tensor, u: torch.Tensor | None) -> None:
        """:meth:`fill` from the residual ``r`` and the codes ``u`` with torch ops."""
        found = over_eager(r, u if self.with_u else None, self.threshold)
        self.fill(found if found[0].numel() <= self.cap else None)



def over_eager(
    x: torch.Tensor, u: torch.Tensor | None, threshold: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The values of ``x`` (rows) with ``|x| > threshold`` in order, ``u``'s values there
    (``u`` like ``x``, or ``None``) and their rows."""
    at = (x.abs() > threshold).nonzero()
    flat = at[:, 0] * x.shape[1] + at[:, 1]
    took_u = None if u is None else u.reshape(-1).index_select(0, flat)
    return x.reshape(-1).index_select(0, flat), took_u, at[:, 0].contiguous()
