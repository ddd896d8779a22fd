"""Python's cyclic garbage collector around the CPU-heavy parts of an export.

After importing torch, transformers and sympy a process holds about 450 thousand objects that
the collector tracks. Tracing a model allocates millions of small objects (FX nodes, sympy
expressions, fake tensors), which triggers full collections that traverse all of them again:
measured on the 122M-parameter Llama export, 1.3 s of CPU in 8 full collections while
capturing, and 1.5 s more when the interpreter exits. Objects alive before the capture
(modules, the model) are long-lived; :func:`long_lived_frozen` moves them out of the
collector's sight for its duration (``gc.freeze``), then back (``gc.unfreeze``), so nothing is
kept alive longer. :func:`skip_exit_collections` is for a command line process that is about to
exit: the collections of interpreter shutdown only free memory the operating system reclaims
anyway.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: set by :func:`own_process`: this process is the ``t2n`` command, its objects are ours
_OWN_PROCESS = False


@contextlib.contextmanager
def long_lived_frozen() -> Iterator[None]:
    """Freeze every object alive now for the duration (objects created inside are collected
    as usual). Does nothing when the process already froze objects itself (a forking server
    that called ``gc.freeze``): that choice is left as it is."""
    if not _OWN_PROCESS and (gc.get_freeze_count() or not gc.isenabled()):
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def skip_exit_collections() -> None:
    """At the end of a command line run: freeze every object, so that the interpreter's exit
    deallocates them without full collections traversing them (``atexit`` handlers and
    objects' finalizers still run; only unreachable reference cycles are left to the OS)."""
    gc.freeze()


def own_process() -> None:
    """At the start of a command line run (the process is ours until it exits): freeze what
    the imports created (until the first capture ends), and collect the
    youngest objects every 10000 allocations instead of 700 (fewer passes that promote objects
    toward full collections: 3 instead of 8 on the 122M Llama export)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
