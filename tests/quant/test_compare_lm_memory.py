"""compare on a causal LM runs the token ids batch by batch: the figures are those of all the
rows at once, while the activations it holds (logits, the measured layers' outputs) are one
batch's whatever the number of rows."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from t2n_quant.compare import compare, lm_metrics
from tests.core.test_hf_llama import VOCAB, tiny_llama


class ActivationBytes(TorchDispatchMode):
    """Remembers every tensor of 3 or more dims (activations: batch x tokens x ...) that an op
    makes; :meth:`held` is the bytes of those still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() >= 3 and type(t) is torch.Tensor:
                self.made.append(weakref.ref(t.untyped_storage()))
        return out

    def held(self) -> int:
        alive = {s.data_ptr(): s.nbytes() for r in self.made if (s := r()) is not None}
        return sum(alive.values())


def _compare(ids: torch.Tensor, batch_size: int):
    model = tiny_llama()
    mode = ActivationBytes()
    peaks: list[int] = []
    model.register_forward_pre_hook(lambda *_: peaks.append(mode.held()))
    with mode:
        c = compare(model, ids, ["minmax:2:g32"], batch_size=batch_size, progress=False)
    return c, max(peaks)


def test_figures_of_batches_are_those_of_all_rows_at_once():
    ids = torch.randint(0, VOCAB, (5, 12), generator=torch.Generator().manual_seed(3))
    model = tiny_llama()
    whole = compare(model, ids, ["minmax:2:g32"], batch_size=5, progress=False)
    parts = compare(model, ids, ["minmax:2:g32"], batch_size=2, progress=False)  # 2 + 2 + 1
    a, b = whole.results[0], parts.results[0]
    assert b.sqnr == pytest.approx(a.sqnr, rel=1e-9) and b.cosine == pytest.approx(a.cosine)
    assert b.lm.kl == pytest.approx(a.lm.kl, rel=1e-5) and b.lm.top1 == a.lm.top1
    assert b.lm.perplexity == pytest.approx(a.lm.perplexity, rel=1e-6)
    assert parts.reference_perplexity == pytest.approx(whole.reference_perplexity, rel=1e-6)
    for x, y in zip(a.layers, b.layers):
        assert y.output_sqnr == pytest.approx(x.output_sqnr, rel=1e-9)
        assert y.output_cosine == pytest.approx(x.output_cosine, rel=1e-9)
    # and those the LM metrics give on the whole logits of the quantized model
    q = copy.deepcopy(model)
    a.quantize(q, progress=False)
    with torch.no_grad():
        direct = lm_metrics(model(ids).logits, q(ids).logits, ids)
    assert a.lm.kl == pytest.approx(direct.kl, rel=1e-5) and a.lm.top1 == direct.top1
    assert a.lm.kl > 0 and a.sqnr > 0


def test_activations_held_are_one_batchs_whatever_the_number_of_rows():
    g = torch.Generator().manual_seed(4)
    few, many = (torch.randint(0, VOCAB, (n, 12), generator=g) for n in (2, 8))
    _, held_few = _compare(few, batch_size=2)
    c_many, held_many = _compare(many, batch_size=2)
    assert c_many.results[0].lm is not None and held_few > 0
    # holding the float model's outputs for all 8 rows would be 4x the 2 rows' bytes
    assert held_many <= 1.05 * held_few
