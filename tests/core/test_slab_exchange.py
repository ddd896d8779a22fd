"""A PyTorch pass beside the writer takes the slabs the writer reads (t2n_core.slab_exchange):
each weight read once, the same values as a pass on its own, bounded memory in any order, and
a writer's failure stops the pass."""

from __future__ import annotations

import threading

import pytest
import torch

import t2n_core.deferred
from t2n_core.deferred import DeferredTensor
from t2n_core.slab_exchange import SlabExchange

ROWS, COLS = 24, 16  # 3 slabs of 8 rows each (FLOAT_SLAB_VALUES = 128)


@pytest.fixture(autouse=True)
def small_slabs(monkeypatch):
    monkeypatch.setattr(t2n_core.deferred, "FLOAT_SLAB_VALUES", 8 * COLS)


def weights(n: int, reads: list[tuple[int, int, int]]) -> list[DeferredTensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        source = torch.randn(ROWS, COLS, generator=gen).to(torch.bfloat16)

        def read(b: int, e: int, i: int = i, source: torch.Tensor = source) -> torch.Tensor:
            reads.append((i, b, e))
            return source[b:e]

        out.append(DeferredTensor(read, (ROWS, COLS), torch.float32, name=f"w{i}"))
    return out


def write(ws: list[DeferredTensor]) -> list[bytes]:
    """What the archive writer does: every encoding first, then each payload, in order."""
    encodings = [w.nnef_encoding(f"w{i}") for i, w in enumerate(ws)]
    return [b"".join(bytes(c) for c in e.variables[0].chunks()) for e in encodings]


def forward(ws: list[DeferredTensor]) -> torch.Tensor:
    x = torch.ones(2, COLS)
    for w in ws:
        x = torch.nn.functional.linear(x, w)[:, :COLS].tanh()
    return x


def test_pass_takes_every_slab_from_the_writer():
    alone_reads: list = []
    expected = forward(weights(3, alone_reads))
    reads: list = []
    ws = weights(3, reads)
    ex = SlabExchange(lambda: forward(ws))
    with ex.beside_writer():
        payloads = write(ws)
    assert torch.equal(ex.result(), expected)
    assert sorted(reads) == sorted(alone_reads)  # each slab read once, by the writer
    assert (ex.taken, ex.read_again, ex.dropped) == (9, 0, 0)
    assert payloads == write(weights(3, []))


def test_other_order_stays_bounded_and_correct():
    """The pass needs the weights in the reverse order of the writer's: slabs beyond the
    limit are dropped, not kept, and read again by the pass."""
    reads: list = []
    ws = weights(4, reads)
    expected = forward(weights(4, [])[::-1])
    ex = SlabExchange(lambda: forward(ws[::-1]), limit_bytes=3 * 8 * COLS * 4)
    with ex.beside_writer():
        write(ws)
    assert torch.equal(ex.result(), expected)
    assert ex.dropped > 0 and ex.read_again == ex.dropped
    assert ex.taken + ex.read_again == 12
    assert len(reads) == 12 + ex.read_again


def test_writer_failure_stops_the_pass():
    ws = weights(2, [])
    started = threading.Event()

    def slow_pass() -> torch.Tensor:
        started.set()
        return forward(ws)

    ex = SlabExchange(slow_pass)
    with pytest.raises(RuntimeError, match="disk full"), ex.beside_writer():
        ws[0].nnef_encoding("w0")
        ws[1].nnef_encoding("w1")
        next(iter(ws[0].nnef_encoding("w0").variables[0].chunks()))  # one slab stored
        raise RuntimeError("disk full")
    assert started.is_set()
    assert ex._thread is not None and not ex._thread.is_alive()


def test_pass_error_is_raised_by_result():
    ws = weights(1, [])

    def failing() -> None:
        torch.nn.functional.linear(torch.ones(1, COLS), ws[0])
        raise ValueError("bad sample")

    ex = SlabExchange(failing)
    with ex.beside_writer():
        write(ws)
    with pytest.raises(ValueError, match="bad sample"):
        ex.result()


def test_without_streamed_weights_the_pass_runs_after():
    ex = SlabExchange(lambda: threading.current_thread().name)
    with ex.beside_writer():
        pass
    assert ex.result() == threading.current_thread().name


def test_exports_in_two_threads_have_their_own_exchange():
    results: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def export(i: int) -> None:
        ws = weights(2 + i, [])
        ex = SlabExchange(lambda: forward(ws))
        with ex.beside_writer():
            write(ws)
        results[i] = (ex.result(), forward(weights(2 + i, [])), ex.taken)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (got, want, taken) in results.items():
        assert torch.equal(got, want) and taken == 3 * (2 + i)
