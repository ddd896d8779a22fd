"""Op translations, one module per op family; importing this package registers all of them."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("registry",) and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
