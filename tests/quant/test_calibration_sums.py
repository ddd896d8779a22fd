"""mse / hqq internals against the slow reference formulas: BlockFit's sums (``sum w x u`` is
solved from the error, not summed), its least-squares step, and the never-worse-than-minmax
guarantee on weights of any scale, with zero and constant blocks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from t2n_quant import calibrate
from t2n_quant.calibration.minmax import minmax_params
from t2n_quant.calibration.mse import BlockFit, block_error, mse_search
from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, QParams, SymmetricCodec

CODECS = [Q4_0Codec(), MinMaxCodec(4, 32), MinMaxCodec(2, 16), MinMaxCodec(8, None),
          SymmetricCodec(4, 32), SymmetricCodec(3, 16), SymmetricCodec(8, None)]  # fmt: skip
IDS = [c.spec for c in CODECS]


def reference_sums(
    codec: Codec, x: torch.Tensor, params: QParams, w: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The sums and the error, straight from their definitions, in float64."""
    stored = codec.store(params)
    u = codec.float_codes(x, params).double()
    if stored.zero is not None:
        u = u - stored.zero.double()
    value = u * stored.scale.double()
    xd, wd = x.double(), w.double().expand_as(u)
    return {
        "error": ((xd - value) ** 2 * wd).sum(-1, keepdim=True),
        "sxu": (wd * xd * u).sum(-1, keepdim=True),
        "suu": (wd * u * u).sum(-1, keepdim=True),
        "su": (wd * u).sum(-1, keepdim=True),
    }


def scaled_blocks(codec: Codec, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, codec.block_size(64), generator=g) * scale
    x[3] = 0.0  # an all-zero block
    x[5] = 0.5 * scale  # a constant block
    return x


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_blockfit_sums_match_the_definitions(codec: Codec, scale: float, weighted: bool) -> None:
    x = scaled_blocks(codec, scale, seed=1)
    k = x.shape[1]
    w = torch.rand(1, k, generator=torch.Generator().manual_seed(2)) if weighted else None
    fit = BlockFit(codec, x, w)
    # min-max, a shrunk scale (clips) and a grown one: the sums hold for any parameters
    mm = minmax_params(codec, x)
    for factor in (1.0, 0.7, 1.3):
        params = QParams(mm.scale * factor, mm.zero)
        got = fit.score(params)
        ref = reference_sums(codec, x, params, torch.ones(1, k) if w is None else w)
        norm = ref["error"] + ref["suu"] * codec.store(params).scale.double() ** 2
        torch.testing.assert_close(got.error.double(), ref["error"], rtol=1e-5, atol=1e-30)
        assert got.sxu is not None and got.suu is not None
        # sum x u is solved from the error: its slack is relative to sum x x, not to itself
        sxu_slack = (
            1e-5 * (norm + 1e-30) / codec.store(params).scale.double().abs().clamp(min=1e-30)
        )
        assert bool(((got.sxu.double() - ref["sxu"]).abs() <= sxu_slack).all())
        torch.testing.assert_close(got.suu.double(), ref["suu"], rtol=1e-5, atol=1e-6)
        if codec.has_zero:
            assert got.su is not None
            torch.testing.assert_close(got.su.double(), ref["su"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_least_squares_step_matches_the_normal_equations(codec: Codec) -> None:
    x = scaled_blocks(codec, 1.0, seed=3)
    fit = BlockFit(codec, x)
    start = minmax_params(codec, x)
    step = fit.least_squares(fit.score(start))
    ref = reference_sums(codec, x, start, torch.ones(1, x.shape[1]))
    stored = codec.store(start)
    live = (ref["suu"] > 0).squeeze(1) & (x.abs().amax(-1) > 0)
    if not codec.has_zero:
        s = (ref["sxu"] / ref["suu"]).float().to(torch.float16).float()
        torch.testing.assert_close(step.scale[live], s[live], rtol=1e-3, atol=0)
        return
    # fit x ~ a u + b per block; then scale = a and zero = z - b / a
    n = x.shape[1]
    sx = x.double().sum(-1, keepdim=True)
    var = ref["suu"] - ref["su"] ** 2 / n
    a = (ref["sxu"] - sx * ref["su"] / n) / var
    live &= (var > 0).squeeze(1) & (a > 0).squeeze(1)
    a16 = a.float().to(torch.float16).double()
    zero = (stored.zero.double() - (sx - a16 * ref["su"]) / n / a16).clamp(0, codec.qmax)
    torch.testing.assert_close(step.scale.double()[live], a16[live], rtol=1e-3, atol=0)
    torch.testing.assert_close(step.zero.double()[live], zero[live], rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    method=st.sampled_from(["mse", "hqq"]),
    scale=st.sampled_from([1e-4, 0.02, 1.0, 50.0]),
    heavy=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_never_worse_than_minmax_any_scale(
    codec: Codec, method: str, scale: float, heavy: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, codec.block_size(64), generator=g)
    if heavy:  # Student-t with 2 degrees of freedom: a normal over a chi
        x = x / (torch.randn(16, x.shape[1], 2, generator=g).square().mean(-1).sqrt() + 1e-3)
    x = x * scale
    x[0] = 0.0
    base = block_error(codec, x, minmax_params(codec, x), 2.0)
    got = block_error(codec, x, calibrate(codec, x, method), 2.0)
    assert bool((got <= base).all())


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_weighted_mse_never_worse_than_minmax_in_its_weights(codec: Codec) -> None:
    x = scaled_blocks(codec, 0.05, seed=4)
    w = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) ** 3  # per block

    def weighted(params: QParams) -> torch.Tensor:
        return ((codec.fake_quantize(x, params) - x).square() * w).sum(-1)

    assert bool((weighted(mse_search(codec, x, weights=w)) <= weighted(
        minmax_params(codec, x))).all())  # fmt: skip


@pytest.mark.parametrize("method", ["mse", "hqq"])
def test_chunks_and_kept_scratch_change_nothing(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from t2n_quant.calibration import mse

    codec = MinMaxCodec(3, 16)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(7))
    whole = calibrate(codec, x, method)  # one chunk
    monkeypatch.setattr(mse, "CHUNK_VALUES", 16 * 6)  # 7 chunks, the last one short
    calibrate(codec, torch.randn(13, 16) * 50, method)  # leaves other values in the scratch
    chunked = calibrate(codec, x, method)
    in_thread: list[QParams] = []
    t = threading.Thread(target=lambda: in_thread.append(calibrate(codec, x, method)))
    t.start()
    t.join()
    for got in (chunked, in_thread[0]):  # row sums of other lengths round differently
        torch.testing.assert_close(got.scale, whole.scale, rtol=1e-6, atol=0)
        torch.testing.assert_close(got.zero, whole.zero, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_starts_are_minmax_exactly(codec: Codec) -> None:
    from t2n_quant.calibration.mse import starts

    x = scaled_blocks(codec, 1.0, seed=8)
    x[7] = -x[7].abs().amax()  # a tie of magnitudes across signs
    x[7, 0] = -x[7, 0]
    mm, other = starts(codec, x)
    ref = minmax_params(codec, x)
    assert torch.equal(mm.scale, ref.scale)
    assert (mm.zero is None and ref.zero is None) or torch.equal(mm.zero, ref.zero)
    assert (other is None) == codec.has_zero


@pytest.mark.parametrize("rows_over", [0, 2, 30])
def test_hqq_shrink_collected_or_dense_same_sums(rows_over: int) -> None:
    """_shrink_sums from the values over the threshold alone (collected while scoring) and
    from all of them (dense) against shrink_lp summed directly."""
    from t2n_quant.calibration import fused
    from t2n_quant.calibration.hqq import _shrink_sums, shrink_lp, threshold

    codec = Q4_0Codec()
    g = torch.Generator().manual_seed(9)
    r = torch.randn(32, 32, generator=g) * 0.02  # under the threshold 10 ** (-1 / 1.3) = 0.17
    r[:rows_over, :3] = torch.randn(rows_over, 3, generator=g).sign() * 0.6
    u = torch.randint(-8, 8, (32, 32), generator=g).float()
    e = shrink_lp(r, beta=10.0, p=0.7)
    fit = BlockFit(codec, torch.randn(32, 32))
    taken = fused.Taken(threshold(10.0, 0.7), 1000, with_u=True)
    taken.take_eager(r, u)
    for t in (taken, None):
        se, seu = _shrink_sums(fit, r.clone(), u, 10.0, 0.7, t)
        if rows_over == 0 and t is not None:
            assert se is None and seu is None
            continue
        assert se is not None and seu is not None
        torch.testing.assert_close(se, e.sum(-1, keepdim=True), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(seu, (e * u).sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["q4_0", "symmetric:4:g32", "minmax:3:g64", "minmax:2:g16"])
def test_hqq_blocks_are_fitted_alone_on_any_thread_count(spec: str) -> None:
    """Each block's hqq shrink sums are added per block in a fixed order, so its parameters
    are the same on 1 or 2 threads, and with other blocks around it (the same path here)."""
    from t2n_quant.calibration.hqq import hqq_params

    codec = Codec.from_spec(spec)
    g = torch.Generator().manual_seed(11)
    w = torch.randn(130, 256, generator=g) * torch.rand(130, 1, generator=g) * 2
    blocks = w.reshape(-1, codec.block_size(256))
    whole = hqq_params(codec, blocks)
    part = hqq_params(codec, blocks[7:40])
    assert torch.equal(part.scale, whole.scale[7:40])
    assert part.zero is None or torch.equal(part.zero, whole.zero[7:40])  # type: ignore[index]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = hqq_params(codec, blocks)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(two.scale, whole.scale)
    assert two.zero is None or torch.equal(two.zero, whole.zero)  # type: ignore[arg-type]
