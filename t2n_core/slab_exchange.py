"""``SlabExchange``: a PyTorch pass over streamed weights that reuses the writer's reads.

Writing a streamed model reads every :class:`~t2n_core.deferred.DeferredTensor` once, a slab
of rows at a time, and converts or quantizes it. A PyTorch pass over the same model (the io
samples of an LLM export) would read, convert or quantize every weight again: on a checkpoint
larger than the page cache, a second read of the whole checkpoint from disk. Instead, the pass
runs in a thread beside the writer and takes each slab as the writer stores it:

- ``announce``: the writer's encodings name the slabs it will store (before any is read);
- ``offer``: the writer stores a slab; the first one starts the pass (capture is over by
  then: the pass never runs beside ``torch.export``);
- ``take``: the pass asks for a slab; an announced slab not stored yet is waited for, one
  stored and already gone (or never announced: an embedding's rows) is read again by the
  pass itself.

The values are the same either way: a slab taken is the writer's stored value, turned into
floats by the tensor's own ``to_float`` (bit for bit its ``float_rows``). Memory stays
bounded: the writer waits while more than :data:`LIMIT_BYTES` of stored slabs wait for the
pass, unless the pass waits for a slab not among them (the orders differ), then the oldest
is dropped (the pass reads it again later).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

#: stored slabs that may wait for the pass (the writer waits beyond)
LIMIT_BYTES = 64 << 20

T = TypeVar("T")

_WRITER = threading.local()  # in a writer's thread: the exchange it writes beside
_PASS = threading.local()  # in a pass's thread: its exchange, active or not


def active_exchange() -> SlabExchange[Any] | None:
    """The exchange of the calling thread: the one its writing feeds (see
    :meth:`SlabExchange.beside_writer`), or the pass's own; None when none is. (Exports in
    other threads have their own.)"""
    return getattr(_PASS, "exchange", None) or getattr(_WRITER, "exchange", None)


class _Cancelled(Exception):
    """Raised in the pass's thread when the writer failed: the pass stops."""


class SlabExchange(Generic[T]):
    """Runs ``run()`` (a PyTorch pass over the model) in a thread fed by the writer's slabs.

    >>> ex = SlabExchange(lambda: 42)
    >>> with ex.beside_writer():
    ...     pass  # nothing written: the pass runs in the caller's thread below
    >>> ex.result()
    42
    """

    def __init__(self, run: Callable[[], T], *, limit_bytes: int = LIMIT_BYTES) -> None:
        self._run = run
        self._limit = limit_bytes
        self._cond = threading.Condition()
        self._ready: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._announced: set[Hashable] = set()
        self._offered: set[Hashable] = set()
        self._wanted: Hashable | None = None  # the slab the pass waits for, absent
        self._writer_done = False
        self._cancelled = False
        self._thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        self._pass_done = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self.taken = 0
        self.read_again = 0
        self.dropped = 0

    @contextlib.contextmanager
    def beside_writer(self) -> Iterator[SlabExchange[T]]:
        """Active around the writing: the pass starts with the first slab stored. When the
        block raises, the pass is stopped; otherwise it goes on, reading what remains."""
        outer = getattr(_WRITER, "exchange", None)
        _WRITER.exchange = self
        self._writer_thread = threading.current_thread()
        ok = False
        try:
            yield self
            ok = True
        finally:
            _WRITER.exchange = outer
            with self._cond:
                self._writer_done = True
                self._cancelled = not ok
                self._cond.notify_all()
            if not ok and self._thread is not None:
                self._thread.join()

    def is_pass(self) -> bool:
        """Whether the calling thread is the pass's."""
        return self._thread is not None and threading.current_thread() is self._thread

    def is_writer(self) -> bool:
        """Whether the calling thread is the writer's (the one in :meth:`beside_writer`)."""
        return threading.current_thread() is self._writer_thread

    # ---- writer side -------------------------------------------------------------------

    def announce(self, keys: Iterable[Hashable]) -> None:
        """The writer will store these slabs."""
        with self._cond:
            self._announced.update(keys)

    def offer(self, key: Hashable, stored: Any, nbytes: int) -> None:
        """The writer stored slab ``key`` (``nbytes`` in memory): hand it to the pass."""
        start = False
        with self._cond:
            if self._cancelled or self._pass_done:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="t2n-pass", daemon=True)
                start = True
            self._offered.add(key)
            self._ready[key] = (stored, nbytes)
            self._bytes += nbytes
            self._cond.notify_all()
            while self._bytes > self._limit and self._ready:
                if self._pass_done or self._cancelled:
                    break
                if self._wanted is not None and self._wanted not in self._ready:
                    _, (_, size) = self._ready.popitem(last=False)  # the orders differ
                    self._bytes -= size
                    self.dropped += 1
                    continue
                if start:
                    break  # the pass is not running yet
                self._cond.wait()
        if start:
            self._thread.start()  # type: ignore[union-attr]

    # ---- pass side ---------------------------------------------------------------------

    def take(self, key: Hashable) -> Any | None:
        """The writer's stored value of slab ``key`` (waited for when announced and not
        stored yet), or None: the pass reads it itself."""
        with self._cond:
            while True:
                if self._cancelled:
                    raise _Cancelled
                if key in self._ready:
                    stored, size = self._ready.pop(key)
                    self._bytes -= size
                    self.taken += 1
                    self._cond.notify_all()
                    return stored
                if self._writer_done or key in self._offered or key not in self._announced:
                    self.read_again += 1
                    return None
                self._wanted = key
                self._cond.notify_all()
                self._cond.wait()
                self._wanted = None

    def _main(self) -> None:
        _PASS.exchange = self
        try:
            self._value = self._run()
        except _Cancelled:
            pass
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc
        finally:
            with self._cond:
                self._pass_done = True
                self._ready.clear()
                self._bytes = 0
                self._cond.notify_all()

    def cancel(self) -> None:
        """Stop the pass (at its next slab) and wait for its thread; no-op once it ended."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> T:
        """The pass's value, after the writing: waits for its thread, or runs the pass here
        when the writer stored nothing (no streamed weight)."""
        if self._thread is None:
            return self._run()
        self._thread.join()
        if self._error is not None:
            raise self._error
        logger.info(
            "PyTorch pass beside the writer: %d slab(s) taken from the writer, %d read again "
            "(%d dropped: the pass needed them in another order)",
            self.taken, self.read_again, self.dropped,
        )  # fmt: skip
        return self._value  # type: ignore[return-value]
