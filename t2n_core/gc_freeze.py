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
anyway. :func:`command_line_imports` gives the ``t2n`` command fewer collections while it
imports torch, transformers and sympy (before it can call :func:`own_process`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator

#: set by :func:`own_process`: this process is the ``t2n`` command, its objects are ours
_OWN_PROCESS = False
#: the ``t2n`` command's thresholds of the two young generations (Python's default: 700, 10)
COMMAND_THRESHOLDS = (10_000, 100)
#: the module that ``python -m`` runs as the ``t2n`` command
COMMAND_MODULE = "t2n_core.cli"


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
    youngest objects every 10000 allocations instead of 700, the middle generation every 100
    young collections instead of 10 (the objects a trace leaves alive a while are not
    traversed again and again). On the 122M Llama ``export-llm`` (q4_0): 0.3 s of CPU in
    collections instead of 0.55 s with (10000, 10) and 0.75 s with Python's default, the same
    peak RSS."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    gc.freeze()
    gc.set_threshold(*COMMAND_THRESHOLDS, gc.get_threshold()[2])


def is_command_line(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``t2n`` command: its console script (``sys.argv[0]``), or
    ``python [options] -m t2n_core.cli`` (``sys.orig_argv``: ``sys.argv[0]`` is still ``-m``
    while Python imports the module's package)."""
    argv = sys.argv if argv is None else argv
    orig = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]).removesuffix(".exe") == "t2n":
        return True
    options = iter(orig[1:])
    for arg in options:
        if arg.startswith("-m"):
            return (arg[2:] or next(options, None)) == COMMAND_MODULE
        if not arg.startswith("-") or arg.startswith("-c"):
            return False  # a script or -c: what follows is its own
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            next(options, None)  # the option's value
    return False


def command_line_imports() -> None:
    """Called by ``t2n_core/__init__.py`` before it imports torch: in the ``t2n`` command
    (:func:`is_command_line`), the collector's thresholds are :func:`own_process`'s from
    then on, not only once the command starts. With Python's default (700, 10), importing
    torch, transformers and sympy alone runs about 6 full collections, each traversing every
    object imported so far (0.7 s of CPU). Any other process (a library user's) is left
    alone."""
    if is_command_line():
        gc.set_threshold(*COMMAND_THRESHOLDS, gc.get_threshold()[2])
