"""plan() streams the float model's outputs batch by batch: the errors it measures are those
of holding every batch's outputs, while the outputs it keeps alive are one batch's."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import torch
from torch import nn

from t2n_quant import plan, quantize_tensor
from t2n_quant.config import resolve
from t2n_quant.plan import _measure
from t2n_quant.weights import collect_weights

VOCAB = 97  # a last dimension nothing else in these tests has


class TinyLM(nn.Module):
    """Embedding -> Linear -> logits, returned as ``.logits`` (as a Hugging Face LM does);
    counts, at each forward, how many of the logits it returned before are still held."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 64)
        self.mid = nn.Linear(64, 64)
        self.head = nn.Linear(64, VOCAB)
        self.returned: list[weakref.ref] = []  # the storages of the logits returned
        self.alive: list[int] = []

    def forward(self, ids: torch.Tensor) -> SimpleNamespace:
        self.alive.append(sum(r() is not None for r in self.returned))
        logits = self.head(torch.relu(self.mid(self.embed(ids))))
        self.returned.append(weakref.ref(logits.untyped_storage()))
        return SimpleNamespace(logits=logits)


def _batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (2, 12), generator=g) for _ in range(n)]


def _naive_errors(model: TinyLM, specs: list[str], data: list[torch.Tensor]) -> dict:
    """Every batch's float logits held at once, as plan() did before it streamed them."""
    with torch.no_grad():
        ref = [model(x).logits for x in data]
        errors = {}
        for w in collect_weights(model):
            if w.name == "embed.weight":
                continue
            module = w.users[0][1]
            original = module.weight
            for spec in specs:
                module._parameters["weight"] = nn.Parameter(
                    quantize_tensor(original, spec, calibration="mse"), requires_grad=False
                )
                total = 0.0
                for r, x in zip(ref, data):
                    pa, pb = r.log_softmax(-1), model(x).logits.log_softmax(-1)
                    total += (pa.exp() * (pa - pb)).sum(-1).mean().item()
                errors[(w.name, spec)] = total / len(data)
            module._parameters["weight"] = original
    return errors


def test_streamed_errors_equal_those_of_holding_every_batch():
    model, data, specs = TinyLM(), _batches(3), ["q4_0", "minmax:2:g32"]
    layers = [(w, [resolve(s) for s in specs]) for w in collect_weights(model)
              if w.name != "embed.weight"]  # fmt: skip
    batches = [((x,), {}) for x in data]
    got = _measure(model, layers, batches, "mse", {}, {}, progress=False)
    want = _naive_errors(model, specs, data)
    assert got == want  # same sums in the same order: equal to the last bit
    assert all(v > 0 for v in got.values())


def test_outputs_held_are_one_batchs_whatever_the_number_of_batches():
    peaks = {}
    for n in (2, 6):
        model = TinyLM()
        plan(model, 4.0, ["q4_0", "minmax:2:g32"], data=_batches(n), exclude="embed",
             max_batches=n, progress=False)  # fmt: skip
        peaks[n] = max(model.alive)
    # at a forward: at most the float output of the batch being compared (plus one trial's
    # output not yet collected); holding every batch's float outputs would give n or more
    assert peaks[2] <= 2 and peaks[6] == peaks[2]
