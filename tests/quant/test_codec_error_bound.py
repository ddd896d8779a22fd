"""minmax / symmetric with min-max calibration: error at most half a step (+ f16 slack)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from t2n_quant import quantize_tensor
from t2n_quant.codecs import SUPPORTED_BITS, MinMaxCodec, SymmetricCodec


@st.composite
def weights(draw: st.DrawFn) -> tuple[object, torch.Tensor]:
    kind = draw(st.sampled_from([MinMaxCodec, SymmetricCodec]))
    bits = draw(st.sampled_from(SUPPORTED_BITS))
    group = draw(st.sampled_from([16, 32, None]))
    rows = draw(st.integers(1, 3))
    k = draw(st.integers(1, 40)) if group is None else group * draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
    values = draw(
        st.lists(
            st.floats(-1.0, 1.0, width=32, allow_subnormal=False),
            min_size=rows * k,
            max_size=rows * k,
        )
    )
    w = torch.tensor(values, dtype=torch.float32).reshape(rows, k) * scale
    return kind(bits=bits, group_size=group), w


@settings(max_examples=100, deadline=None)
@given(weights())
def test_error_at_most_half_a_step(case: tuple[object, torch.Tensor]) -> None:
    codec, w = case
    qt = quantize_tensor(w, codec)
    bs = qt.block_size
    blocks = w.reshape(-1, bs)
    err = (qt.dequantize().reshape(-1, bs) - blocks).abs()
    step = qt.scale.float().abs()
    bound = 0.5 * step * (1 + 1e-3) + 1e-6 * blocks.abs()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"
    # and the step is the min-max step, not a larger one
    lo = blocks.amin(-1, keepdim=True).clamp(max=0)
    hi = blocks.amax(-1, keepdim=True).clamp(min=0)
    if codec.has_zero:
        ideal = (hi - lo) / codec.qmax
    else:
        ideal = torch.maximum(hi, -lo) / ((1 << (codec.bits - 1)) - 1)
    assert bool((step <= ideal * (1 + 2**-10) + 2**-24).all())


def test_constant_and_zero_blocks_exact() -> None:
    w = torch.zeros(2, 32)
    for spec in ("minmax:4:g32", "symmetric:4:g32", "minmax:3:pc"):
        assert torch.equal(quantize_tensor(w, spec).dequantize(), w)
    c = torch.full((1, 16), 0.75)
    assert torch.equal(quantize_tensor(c, "minmax:2:g16").dequantize(), c)
