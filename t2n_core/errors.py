"""Exception classes of t2n, rooted in :class:`T2NError`.

Each also subclasses the matching builtin so callers may catch either,
e.g. ``except ValueError`` catches :class:`ExportInputError`.
"""

from __future__ import annotations


class T2NError(Exception):
    """Base of every error raised on purpose by t2n."""


class ExportInputError(T2NError, ValueError):
    """The model, example inputs, names or axes handed to ``export`` are not usable."""


class UnsupportedArchitectureError(ExportInputError):
    """A causal LM whose cache holds state the exported KV-cache step cannot carry (the
    recurrent state of Mamba-like layers, ...); names the architecture and what is known to work."""


class CaptureError(T2NError, RuntimeError):
    """``torch.export`` could not capture the model (data-dependent control flow, ...)."""


class UnsupportedOpsError(T2NError, NotImplementedError):
    """One or more ops in the captured graph have no NNEF translation.

    ``problems`` lists every one of them (op, module path, source line, reason).
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} op(s) cannot be translated to NNEF:\n{lines}\n"
            "Rewrite these calls with supported ops (see docs/ops.md), or open an issue."
        )


class TranslationError(T2NError, ValueError):
    """A supported op was called with arguments NNEF/tract cannot express."""


class CheckpointError(T2NError, ValueError):
    """A checkpoint directory is incomplete or unreadable (names the file and what to do)."""


class CheckpointLayoutError(CheckpointError):
    """The checkpoint's tensor names do not match the parameters of the model its config builds."""


class ArchiveExistsError(T2NError, FileExistsError):
    """The export target already exists and ``overwrite`` was not set."""


class ArchiveTargetError(T2NError, OSError):
    """The export target cannot be written, or must not be replaced (it is not an archive)."""


class ArchiveFormatError(T2NError, ValueError):
    """A file does not look like an NNEF archive or a ``.dat`` tensor."""


class CheckMismatchError(T2NError, AssertionError):
    """tract's outputs differ from PyTorch's beyond tolerance."""

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class TractRunError(T2NError, RuntimeError):
    """tract refused to load or run an archive."""


class PulseError(T2NError, RuntimeError):
    """tract cannot pulse (stream) an archive, or the pulsed run cannot be fed as asked."""


class LoraError(T2NError, ValueError):
    """A LoRA adapter cannot be exported as asked, or does not fit the archive it should go in."""
