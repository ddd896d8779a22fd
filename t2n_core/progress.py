"""Progress bars that show only for work that lasts, and never warn in a notebook.

A bar appears after :data:`DELAY_S` seconds, so a sub-second step prints nothing (no ``0%``
lines or carriage returns in logs). In a notebook without ``ipywidgets``, tqdm's text bar
is used quietly instead of tqdm's "IProgress not found" warning.
"""

from __future__ import annotations

import warnings
from typing import Any

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)  # no ipywidgets: fall back to the text bar
    from tqdm.auto import tqdm as _tqdm

#: seconds before a bar shows
DELAY_S = 1.0


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` that shows only once the work has lasted :data:`DELAY_S`."""
    kwargs.setdefault("delay", DELAY_S)
    return _tqdm(iterable, **kwargs)
