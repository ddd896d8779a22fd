"""The compiled scoring pass (t2n_quant.calibration.fused) against BlockFit's eager torch ops:
bit for bit (codes, residuals, sums, errors, and so the parameters mse / hqq pick), on both
of its loops; without a compiler the eager path is used and says so."""

from __future__ import annotations

import logging

import pytest
import torch

from t2n_quant import calibrate
from t2n_quant.calibration import fused
from t2n_quant.calibration.minmax import minmax_params
from t2n_quant.calibration.mse import BlockFit
from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, QParams, SymmetricCodec

CODECS = [Q4_0Codec(), MinMaxCodec(4, 32), MinMaxCodec(2, 16), MinMaxCodec(3, 64),
          MinMaxCodec(8, None), SymmetricCodec(4, 32), SymmetricCodec(3, 16),
          SymmetricCodec(8, None), SymmetricCodec(5, 128)]  # fmt: skip
IDS = [c.spec for c in CODECS]


def awkward_blocks(codec: Codec, seed: int, rows: int = 64) -> torch.Tensor:
    """Normal values with zero, constant, tiny, huge, tied and half-step blocks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, codec.block_size(40), generator=g)
    x[1] = 0.0
    x[2] = -0.75
    x[3] *= 1e-30
    x[4] *= 1e4
    x[5, ::2], x[5, 1::2] = 2.0, -2.0
    x[6] = torch.arange(x.shape[1]).float() / 2 - 7.5  # values on half steps: round to even
    x[7, 0] = -0.0
    return x


def bits(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous().view(torch.int32)


def assert_same(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None:
        assert torch.equal(bits(a), bits(b)), f"{what} differs in {int((bits(a) != bits(b)).sum())}"


def test_the_kernel_builds_here() -> None:
    # a C compiler is part of the machines the suite runs on: the fast path is proven here
    assert fused.kernel() is not None


@pytest.mark.parametrize("rows", [64, 63], ids=["even", "odd"])
@pytest.mark.parametrize("keep_codes", [False, True], ids=["one-buffer", "codes-kept"])
@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_fused_score_is_the_eager_score_bit_for_bit(
    codec: Codec, keep_codes: bool, rows: int
) -> None:
    """Odd rows leave torch's elementwise loops a scalar tail."""
    _fused_equals_eager(codec, awkward_blocks(codec, seed=3, rows=rows), keep_codes)


@pytest.mark.parametrize("codec", [Q4_0Codec(), MinMaxCodec(2, 16), SymmetricCodec(8, None)],
                         ids=lambda c: c.spec)  # fmt: skip
def test_fused_score_is_the_eager_score_on_two_threads(codec: Codec) -> None:
    """2049 rows on two threads: torch splits its loops at a place that is no multiple of
    the vector width (a scalar tail inside)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _fused_equals_eager(codec, awkward_blocks(codec, seed=3, rows=2049), keep_codes=True)
    finally:
        torch.set_num_threads(before)


def _fused_equals_eager(codec: Codec, x: torch.Tensor, keep_codes: bool) -> None:
    assert fused.usable(codec, x)
    mm = minmax_params(codec, x)
    g = torch.Generator().manual_seed(4)
    # min-max, shrunk (clips), grown, jittered per block (as least-squares steps move them),
    # and a zero scale
    jitter = 1 + 0.3 * (torch.rand(mm.scale.shape, generator=g) - 0.5)
    first_zero = torch.ones_like(mm.scale)
    first_zero[0] = 0.0
    candidates = [mm.scale * f for f in (1.0, 0.7, 1.3, jitter, first_zero)]
    for scale in candidates:
        zero = None if mm.zero is None else (mm.zero + torch.rand(mm.zero.shape, generator=g))
        params = QParams(scale, zero)
        for sums in (True, False):
            eager = BlockFit(codec, x, keep_codes=keep_codes)
            eager.fused = False
            got = BlockFit(codec, x, keep_codes=keep_codes)
            assert got.fused
            e, f = eager.score(params, sums=sums), got.score(params, sums=sums)
            for name in ("error", "sxu", "suu", "su", "u", "residual"):
                assert_same(getattr(f, name), getattr(e, name), name)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_portable_loop_matches_the_vector_loop(codec: Codec) -> None:
    x = awkward_blocks(codec, seed=5)
    params = minmax_params(codec, x)
    params = QParams(params.scale * 0.9, params.zero)
    stored = codec.store(params)
    zero = None if stored.zero is None else stored.zero.float()
    out = []
    for portable in (False, True):
        u, r = torch.empty_like(x), torch.empty_like(x)
        inv = fused.reciprocal(codec, params, stored)
        err, suu = fused.score(codec, x, inv, stored.scale.float(), zero, u, r, True, portable)
        out.append((err, suu, u, r))
    for name, a, b in zip(("error", "suu", "u", "residual"), *out, strict=True):
        assert_same(a, b, name)


@pytest.mark.parametrize("method", ["mse", "hqq"])
@pytest.mark.parametrize("spec", ["q4_0", "minmax:4:g32", "symmetric:4:g32", "minmax:3:g64",
                                  "minmax:2:g16", "symmetric:8:pc", "minmax:4:pc"])  # fmt: skip
def test_calibrations_pick_the_same_parameters_with_or_without_it(
    spec: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = Codec.from_spec(spec)
    g = torch.Generator().manual_seed(6)
    w = torch.randn(96, 256, generator=g) * torch.rand(96, 1, generator=g) * 2
    blocks = w.reshape(-1, codec.block_size(256))
    fast = calibrate(codec, blocks, method)
    monkeypatch.setenv("T2N_FUSED", "0")
    assert fused.kernel() is None
    slow = calibrate(codec, blocks, method)
    assert_same(fast.scale, slow.scale, "scale")
    assert_same(fast.zero, slow.zero, "zero")


def test_rows_it_cannot_take_stay_eager() -> None:
    codec = SymmetricCodec(4, None)
    assert not fused.usable(codec, torch.randn(4, 12))  # 12 values a row: not 8 lanes
    assert not fused.usable(codec, torch.randn(4, 16).double())
    assert not fused.usable(Codec.from_spec("nf4:g32"), torch.randn(4, 32))
    assert BlockFit(codec, torch.randn(4, 16), torch.rand(1, 16)).fused is False  # weighted


def test_without_a_compiler_the_eager_path_is_used_and_logged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fused, "_state", {})
    monkeypatch.setenv("T2N_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    codec = Q4_0Codec()
    x = torch.randn(32, 32)
    with caplog.at_level(logging.INFO, logger=fused.__name__):
        assert fused.kernel() is None
        assert not BlockFit(codec, x).fused
        params = calibrate(codec, x, "mse")
    assert "eager torch ops" in caplog.text
    monkeypatch.setattr(fused, "_state", {})
    monkeypatch.delenv("CC")
    assert_same(calibrate(codec, x, "mse").scale, params.scale, "scale")


def test_a_torch_whose_ops_differ_gets_the_eager_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    norm = torch.linalg.vector_norm

    def other_norm(x, dim, keepdim=False):  # type: ignore[no-untyped-def]
        return norm(x.double(), dim=dim, keepdim=keepdim).float()  # sums in another precision

    monkeypatch.setattr(fused, "_state", {})
    with caplog.at_level(logging.WARNING, logger=fused.__name__):
        monkeypatch.setattr(torch.linalg, "vector_norm", other_norm)
        assert fused.kernel() is None
    assert "differs from this torch build" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(fused, "_state", {})
    assert fused.kernel() is not None


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_values_over_a_threshold_collected_while_scoring(codec: Codec) -> None:
    """fused.score's collection (vector and portable loop) against Taken.take_eager: the
    residual's values over the threshold in order, their codes and rows; None past cap."""
    x = awkward_blocks(codec, seed=12)
    params = minmax_params(codec, x)
    params = QParams(params.scale * 0.9, params.zero)
    stored = codec.store(params)
    zero = None if stored.zero is None else stored.zero.float()
    inv = fused.reciprocal(codec, params, stored)
    t = 0.3 * float(stored.scale.float().abs().mean())
    u, r = torch.empty_like(x), torch.empty_like(x)
    fused.score(codec, x, inv, stored.scale.float(), zero, u, r, True)
    want = fused.Taken(t, x.numel(), with_u=True)
    want.take_eager(r, u)
    assert want.values is not None and want.values[0].numel() > 0
    for portable in (False, True):
        for with_u in (True, False):
            got = fused.Taken(t, x.numel(), with_u=with_u)
            fused.score(codec, x, inv, stored.scale.float(), zero, None, None, False, portable,
                        taken=got)  # fmt: skip
            assert got.values is not None
            assert_same(got.values[0], want.values[0], "values")
            assert torch.equal(got.values[2], want.values[2])
            assert (got.values[1] is None) == (not with_u)
            if with_u:
                assert_same(got.values[1], want.values[1], "codes")
        few = fused.Taken(t, want.values[0].numel() - 1, with_u=True)
        fused.score(codec, x, inv, stored.scale.float(), zero, None, None, False, portable,
                    taken=few)  # fmt: skip
        assert few.values is None
