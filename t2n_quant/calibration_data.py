"""Calibration data for data-aware calibrations (GPTQ, AWQ), and its fingerprint.

Accepted forms (:func:`batches`):

- one tensor: one batch, passed as the model's only positional argument;
- a tuple: one batch of positional arguments; a dict (or any mapping, such as a tokenizer's
  ``BatchEncoding``): one batch of keyword arguments;
- a list or any iterable (a ``DataLoader``): several batches, each of the forms above
  (a list or tuple item is that batch's positional arguments).

For causal language models, :func:`text_batches` tokenizes text (strings or a file) with
the model's tokenizer and cuts it into sequences of ``seq_len`` tokens.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from t2n_quant.errors import CalibrationDataError

logger = logging.getLogger(__name__)

Batch = tuple[tuple[Any, ...], dict[str, Any]]

_TEXT = ("calibration data is text: tokenize it first with "
         "t2n_quant.calibration_data.text_batches(tokenizer, text)")  # fmt: skip


def _one(item: Any) -> Batch:
    if isinstance(item, Mapping):  # a dict, a BatchEncoding (a UserDict)
        return (), dict(item)
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    return (item,), {}


def batches(data: Any, limit: int | None = None) -> list[Batch]:
    """The batches of ``data`` as ``(args, kwargs)`` pairs (see the module docstring); with
    ``limit``, the first ``limit`` only (a DataLoader is read no further).

    >>> [len(a) for a, _ in batches([torch.zeros(2, 3), torch.zeros(1, 3)])]
    [1, 1]
    >>> batches(torch.zeros(2, 3))[0][0][0].shape
    torch.Size([2, 3])
    """
    if data is None:
        raise CalibrationDataError(
            "this calibration needs data: pass data= (a tensor, a tuple of inputs, a list of "
            "batches or a DataLoader; for a causal LM, text_batches(tokenizer, text))"
        )
    if isinstance(data, (torch.Tensor, tuple, Mapping)):
        found = [_one(data)]
    elif isinstance(data, (str, bytes, Path)):
        raise CalibrationDataError(_TEXT)
    elif isinstance(data, Iterable):
        found = [_one(item) for item in itertools.islice(data, limit)]
        if any(isinstance(a[0], (str, bytes, Path)) for a, _ in found if len(a) == 1):
            raise CalibrationDataError(_TEXT)
    else:
        raise CalibrationDataError(f"cannot read calibration data of type {type(data).__name__}")
    if not found:
        raise CalibrationDataError("calibration data is empty: give at least one batch")
    for i, (args, kwargs) in enumerate(found):
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        if not tensors:
            raise CalibrationDataError(f"calibration batch {i} holds no tensor")
        if any(t.numel() == 0 for t in tensors):
            raise CalibrationDataError(f"calibration batch {i} holds an empty tensor")
    return found


def _names_a_file(text: str) -> bool:
    if "\n" in text or not text.strip():
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # too long, or not a path at all
        return False


def read_text(text: str | Path | Sequence[str]) -> str:
    """The text of a file path, a string, or several strings joined by blank lines. A
    one-line string naming an existing file is that file (logged), not its name as text."""
    if isinstance(text, str) and _names_a_file(text):
        logger.info("calibration text %r names a file: reading it", text)
        text = Path(text)
    if isinstance(text, Path):
        try:
            return text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CalibrationDataError(f"cannot read text file {text}: {err}") from err
    if isinstance(text, str):
        return text
    if not all(isinstance(t, str) for t in text):
        raise CalibrationDataError(
            "calibration text must be a string, a file path or a list of strings; got items of "
            f"type {sorted({type(t).__name__ for t in text})}"
        )
    return "\n\n".join(text)


def text_batches(
    tokenizer: Any,
    text: str | Path | Sequence[str],
    *,
    seq_len: int = 512,
    n_sequences: int | None = 128,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """``input_ids`` batches (``batch_size x seq_len``) cut from ``text`` tokenized with
    ``tokenizer`` (a Hugging Face tokenizer, or any callable ``str -> list[int]``), at most
    ``n_sequences`` sequences; a text shorter than one sequence gives one shorter sequence.

    >>> ids = text_batches(lambda s: [ord(c) for c in s], "abcdefgh" * 4, seq_len=8)
    >>> [tuple(b.shape) for b in ids]
    [(4, 8)]
    """
    for name, value in (("seq_len", seq_len), ("n_sequences", n_sequences),
                        ("batch_size", batch_size)):  # fmt: skip
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CalibrationDataError(f"{name} must be a whole number >= 1, not {value!r}")
    body = read_text(text)
    if not body.strip():
        where = f" of {text}" if isinstance(text, Path) or _names_a_file(str(text)) else ""
        raise CalibrationDataError(f"the text{where} is empty: nothing to tokenize")
    if hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(body, add_special_tokens=False)
    else:
        ids = list(tokenizer(body))
    if not ids:
        raise CalibrationDataError("the tokenizer turned the text into no tokens")
    tokens = torch.tensor(ids, dtype=torch.long)
    if tokens.numel() < seq_len:
        return [tokens[None]]
    seqs = tokens[: tokens.numel() // seq_len * seq_len].reshape(-1, seq_len)
    if n_sequences is not None:
        seqs = seqs[:n_sequences]
    return list(seqs.split(batch_size))


def fingerprint(data: list[Batch]) -> str:
    """SHA-256 (first 16 hex digits) of every tensor of ``data``: shapes, dtypes and bytes.

    >>> fingerprint(batches(torch.zeros(2))) == fingerprint(batches(torch.zeros(2)))
    True
    """
    h = hashlib.sha256()
    for args, kwargs in data:
        items = list(enumerate(args)) + sorted(kwargs.items())
        for key, value in items:
            h.update(str(key).encode())
            if isinstance(value, torch.Tensor):
                t = value.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:  # an object's default repr holds its address: its type alone then
                text = repr(value)
                h.update((type(value).__qualname__ if " at 0x" in text else text).encode())
    return h.hexdigest()[:16]


def like_model(
    data: list[Batch], model: torch.nn.Module, *, move: bool = True
) -> tuple[list[Batch], str | None]:
    """``data`` with its float tensors in the dtype of ``model``'s float weights, and every
    tensor on their device, when the model holds one dtype / one device and the data
    another (a DataLoader's float32 CPU batches for a bfloat16 model on a GPU; ``move=False``:
    the dtype only); says what it changed, or None. Token ids (integers) keep their dtype.

    >>> data, note = like_model(batches(torch.ones(2, 3)), torch.nn.Linear(3, 1).half())
    >>> data[0][0][0].dtype, note
    (torch.float16, "calibration data converted from float32 to the model's float16")
    """
    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    dtypes, devices = {p.dtype for p in params}, {p.device for p in params}
    dtype = next(iter(dtypes)) if len(dtypes) == 1 else None
    one_device = move and len(devices) == 1 and "meta" not in str(devices)
    device = next(iter(devices)) if one_device else None
    tensors = [t for a, k in data for t in (*a, *k.values()) if isinstance(t, torch.Tensor)]
    cast = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if dtype is not None
                   and t.dtype.is_floating_point and t.dtype != dtype})  # fmt: skip
    moved = sorted({str(t.device) for t in tensors if device is not None and t.device != device})
    if not cast and not moved:
        return data, None

    def fix(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        to_dtype = dtype if t.dtype.is_floating_point and cast else t.dtype
        return t.to(device=device if moved else t.device, dtype=to_dtype)

    fixed = [(tuple(fix(t) for t in a), {k: fix(t) for k, t in kw.items()}) for a, kw in data]
    what = []
    if cast:
        what.append(f"from {', '.join(cast)} to the model's {str(dtype).removeprefix('torch.')}")
    if moved:
        what.append(f"from {', '.join(moved)} to the model's device {device}")
    return fixed, f"calibration data converted {' and '.join(what)}"
