"""Op translations, one module per op family; importing this package registers all of them,
and gives the registry's lookups (complete from then on)."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("registry",) and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

from t2n_core.ops.registry import complex_ops, entries, kept_whole, lookup  # noqa: E402

__all__ = ["complex_ops", "entries", "kept_whole", "lookup"]
