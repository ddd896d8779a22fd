"""t2n_core: export PyTorch models to NNEF archives that the tract engine runs."""
# ruff: noqa: E402  (the collector is set up before torch is imported)

from t2n_core.gc_freeze import command_line_imports

command_line_imports()  # before torch is imported: the t2n command collects less often

from t2n_core.check import CheckReport, check_archive, run_tract
from t2n_core.errors import (
    ArchiveExistsError,
    CaptureError,
    CheckMismatchError,
    ExportInputError,
    LoraError,
    PulseError,
    T2NError,
    TranslationError,
    UnsupportedOpsError,
)
from t2n_core.export import ExportResult, IOSpec, export
from t2n_core.lora_swap import SwapResult, swap_adapter
from t2n_core.many import GraphSpec, ManyExportResult, export_many, load_graph
from t2n_core.pulse import PulseReport, check_pulsed
from t2n_core.version import __version__

__all__ = [
    "ArchiveExistsError",
    "CaptureError",
    "CheckMismatchError",
    "CheckReport",
    "ExportInputError",
    "ExportResult",
    "GraphSpec",
    "IOSpec",
    "LoraError",
    "ManyExportResult",
    "PulseError",
    "PulseReport",
    "SwapResult",
    "T2NError",
    "TranslationError",
    "UnsupportedOpsError",
    "__version__",
    "check_archive",
    "check_pulsed",
    "export",
    "export_many",
    "load_graph",
    "run_tract",
    "swap_adapter",
]
