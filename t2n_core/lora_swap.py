"""``swap_adapter``: put another LoRA adapter into an archive exported with ``lora="separate"``.

Only the adapter files change (``<site>.lora_A.dat``, ``<site>.lora_B.dat``,
``<site>.lora_scale.dat`` for each site the archive's ``lora.sites`` property lists, see
:mod:`t2n_core.lora`); graph.nnef and every other file are copied byte for byte. The new
archive is written like an export (staged, then renamed into place), so the base archive is
never touched and a failed swap leaves nothing behind.

The adapter may be

- a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` or
  ``adapter_model.bin``, as ``save_pretrained`` writes it): keys
  ``base_model.model.<path>.lora_A.weight``, the scale from ``lora_alpha`` / ``r``
  (``use_rslora``, ``alpha_pattern`` and ``rank_pattern`` included);
- a ``.safetensors`` file keyed by the archive's own stems (``<site>.lora_A``, ``.lora_B``
  and, optionally, ``.lora_scale``);
- from Python, a model holding LoRA layers (PEFT or plain) or a dict of such stems.

An adapter tensor's module path (PEFT's ``base_model.model.`` prefix removed when needed)
names the one archive site whose path ends with it: an archive of a PeftModel, of the bare
model with adapters injected, or of a wrapper around either takes the same adapter folder;
a path that fits several sites is refused. A missing or extra tensor, a shape that differs or
a changed rank is refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from t2n_core.errors import LoraError
from t2n_core.lora import (
    MODE_PROPERTY,
    PEFT_PREFIX,
    SITES_PROPERTY,
    SUFFIXES,
    adapter_tensors,
    stem,
)
from t2n_core.nnef import dat
from t2n_core.nnef.archive import (
    FileProducer,
    _check_member,
    _open_tar,
    member_path,
    resolve_target,
    scan_archive,
    write_archive,
)
from t2n_core.nnef.graph_text import graph_properties

logger = logging.getLogger(__name__)


@dataclass
class SwapResult:
    """What :func:`swap_adapter` wrote."""

    path: Path
    replaced: list[str]  # the adapter files written anew
    changed: list[str]  # those whose bytes differ from the base archive's
    bytes_changed: int  # total size of the changed files
    bytes_total: int  # size of all files of the archive
    seconds: float
    notes: list[str] = field(default_factory=list)
    bytes_linked: int = 0  # unchanged files hard-linked to the base's (folder archives)

    def __str__(self) -> str:
        share = 100 * self.bytes_changed / max(self.bytes_total, 1)
        how = "copied"
        if self.bytes_linked:
            how = f"hard-linked to the base archive's ({self.bytes_linked} bytes not copied)"
        lines = [
            f"adapter swapped into {self.path} in {self.seconds:.2f} s: "
            f"{len(self.replaced)} adapter file(s) rewritten, {len(self.changed)} changed: "
            f"{self.bytes_changed} of {self.bytes_total} bytes ({share:.2f}%); every other "
            f"file unchanged, {how}"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class _Site:
    path: str
    rank: int
    fan_in: int
    fan_out: int


def archive_sites(archive: str | os.PathLike) -> list[_Site]:
    """The separate LoRA sites an archive records (its ``lora.sites`` property)."""
    _, files = scan_archive(archive, dat_headers_only=True)
    if "graph.nnef" not in files:
        raise LoraError(f"{os.fspath(archive)} has no graph.nnef: not an NNEF archive")
    props = graph_properties(files["graph.nnef"].decode("utf-8", errors="replace"))
    if props.get(MODE_PROPERTY) != "separate" or SITES_PROPERTY not in props:
        how = f"its LoRA adapters were {props[MODE_PROPERTY]}" if MODE_PROPERTY in props else (
            "it records no LoRA adapter"
        )  # fmt: skip
        raise LoraError(
            f"{os.fspath(archive)} has no separate LoRA adapter files ({how}); export the model "
            "with lora='separate' (t2n export --lora separate) to swap adapters"
        )
    try:
        return [_Site(s["path"], s["rank"], s["in"], s["out"]) for s in json.loads(
            props[SITES_PROPERTY])]  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise LoraError(
            f"{os.fspath(archive)}: unreadable {SITES_PROPERTY} property: {exc}"
        ) from None


def _strip(path: str) -> str:
    return path.removeprefix(PEFT_PREFIX)


def _split_stem(name: str) -> tuple[str, str]:
    site, _, suffix = name.rpartition(".")
    if suffix not in SUFFIXES:
        raise LoraError(
            f"adapter tensor {name!r} is not a LoRA A/B/scale tensor (names end in "
            f"{', '.join('.' + s for s in SUFFIXES)}); the archive only keeps those apart"
        )
    return site, suffix


def load_adapter(adapter: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The adapter's tensors by stem (``<path>.lora_A``...), and notes on how they were read."""
    if isinstance(adapter, nn.Module):
        return adapter_tensors(adapter), []
    if isinstance(adapter, Mapping):
        return {str(k): v for k, v in adapter.items()}, []
    path = Path(adapter)
    if path.is_dir():
        return _load_peft_dir(path)
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path), []
    raise LoraError(
        f"{path}: expected a PEFT adapter folder (adapter_config.json + adapter_model"
        ".safetensors) or a .safetensors file of <site>.lora_A / .lora_B tensors"
    )


def _load_peft_dir(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise LoraError(f"{folder} has no adapter_config.json: not a PEFT adapter folder")
    config = json.loads(config_path.read_text())
    _refuse_variants(config, folder)
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        raw = load_file(weights)
    elif (folder / "adapter_model.bin").is_file():
        raw = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise LoraError(f"{folder} has no adapter_model.safetensors (nor adapter_model.bin)")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        stem = key.removesuffix(".weight")
        site, suffix = _split_stem(stem)
        out[stem] = tensor
        if suffix == "lora_A":
            out[f"{site}.lora_scale"] = torch.tensor([_peft_scale(config, site, tensor)])
    return out, [f"scales from {config_path.name}: lora_alpha={config.get('lora_alpha')}, "
                 f"r={config.get('r')}, use_rslora={bool(config.get('use_rslora'))}"]  # fmt: skip


#: LoraConfig entries that turn plain LoRA into something a separate archive cannot compute
_VARIANT_KEYS = (
    "use_dora", "lora_bias", "use_bdlora", "alora_invocation_tokens", "arrow_config",
    "velora_config", "monteclora_config", "kasa_config", "use_qalora", "target_parameters",
)  # fmt: skip


def _refuse_variants(config: dict[str, Any], folder: Path) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"{folder} holds a {config['peft_type']} adapter, not LoRA")
    used = [k for k in _VARIANT_KEYS if config.get(k)]
    if config.get("init_lora_weights") == "mica":
        used.append("init_lora_weights='mica'")
    if used:
        raise LoraError(
            f"{folder} is not a plain LoRA adapter ({', '.join(used)}): a separate archive "
            "computes x·Wᵀ + s·(x·Aᵀ)·Bᵀ only; export the model with this adapter merged"
        )


def _peft_scale(config: dict[str, Any], site: str, a: torch.Tensor) -> float:
    """PEFT's ``scaling`` of the module at ``site``: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    module = _strip(site)
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if _pattern_matches(pattern, module):
            alpha = float(value)
            break
    r = int(a.shape[0])
    return alpha / r**0.5 if config.get("use_rslora") else alpha / r


def _pattern_matches(pattern: str, module: str) -> bool:
    import re

    return re.match(rf"(.*\.)?({pattern})$", module) is not None  # as peft's get_pattern_key


def _match(sites: list[_Site], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The archive file stem of each adapter tensor; refuses missing / extra / misfit ones."""
    by_tail: dict[str, list[_Site]] = {}
    for s in sites:
        parts = s.path.split(".")
        for i in range(len(parts)):
            by_tail.setdefault(".".join(parts[i:]), []).append(s)
    out: dict[str, torch.Tensor] = {}
    extra = []
    for key, tensor in tensors.items():
        path, suffix = _split_stem(key)
        found = by_tail.get(path) or by_tail.get(_strip(path)) or []
        if len(found) > 1:
            raise LoraError(
                f"adapter tensor {key!r} fits several layers of the archive "
                f"({[s.path for s in found[:3]]}); name it by its full path in the archive"
            )
        if not found:
            extra.append(key)
            continue
        out[stem(found[0].path, suffix)] = tensor
    missing = [stem(s.path, x) for s in sites for x in ("lora_A", "lora_B")
               if stem(s.path, x) not in out]  # fmt: skip
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"the adapter has no tensor for {len(missing)} of the archive's: "
                         f"{missing[:4]}")  # fmt: skip
        if extra:
            parts.append(f"the archive has no adapted layer for {len(extra)} adapter tensor(s): "
                         f"{extra[:4]}")  # fmt: skip
        raise LoraError(
            "; ".join(parts) + ". The adapter must target exactly the layers the archive "
            "was exported with (re-export the model with this adapter otherwise)"
        )
    for site in sites:
        a, b = out[stem(site.path, "lora_A")], out[stem(site.path, "lora_B")]
        if a.ndim == 2 and b.ndim == 2 and a.shape[0] != site.rank:
            raise LoraError(
                f"{site.path}: the adapter has rank {a.shape[0]}, the archive rank {site.rank}; "
                "a swap keeps the graph, so the rank cannot change: re-export with this adapter"
            )
        for name, t, want in (("lora_A", a, (site.rank, site.fan_in)),
                              ("lora_B", b, (site.fan_out, site.rank))):  # fmt: skip
            if tuple(t.shape) != want:
                raise LoraError(
                    f"{stem(site.path, name)}: the adapter's tensor has shape "
                    f"{tuple(t.shape)}, the archive's {list(want)}"
                )
        scale = out.get(stem(site.path, "lora_scale"))
        if scale is not None and scale.numel() != 1:
            raise LoraError(
                f"{stem(site.path, 'lora_scale')} must hold one value, got {tuple(scale.shape)}"
            )
    return out


def _dtype_of(header: dat.DatHeader, name: str) -> torch.dtype:
    if header.is_tract_type:
        raise LoraError(f"{name} is stored in a tract type; adapter files are plain floats")
    return torch.from_numpy(np.zeros(0, header.numpy_dtype())).dtype


def swap_adapter(
    archive: str | os.PathLike,
    adapter: Any,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    compresslevel: int = 0,
) -> SwapResult:
    """Write ``out``: ``archive`` with its LoRA adapter files replaced by ``adapter``'s.

    ``archive`` was exported with ``lora="separate"``; ``adapter`` is a PEFT adapter folder, a
    ``.safetensors`` file of ``<site>.lora_A`` / ``.lora_B`` (/ ``.lora_scale``) tensors, a
    dict of those, or a model holding LoRA layers. Shapes and ranks must be the archive's.
    ``out`` may not be ``archive`` itself (the base is never touched).

    >>> swap_adapter("base.nnef.tgz", "my-adapter/", "tuned.nnef.tgz")   # doctest: +SKIP
    """
    start = time.perf_counter()
    if resolve_target(out).resolve() == resolve_target(archive).resolve():
        raise LoraError(
            f"{os.fspath(out)} is the base archive itself; write the swapped archive to another "
            "path (the base archive is never modified)"
        )
    sites = archive_sites(archive)
    tensors, notes = load_adapter(adapter)
    new = _match(sites, tensors)
    sizes, files = scan_archive(archive, dat_headers_only=True)
    payloads: dict[str, bytes] = {}
    cast: set[str] = set()
    for site in sites:
        for suffix in SUFFIXES:
            name = f"{stem(site.path, suffix)}.dat"
            if name not in files:
                raise LoraError(
                    f"{os.fspath(archive)} lists LoRA site {site.path!r} but has no {name}"
                )
            header = dat.DatHeader.unpack(files[name], name)
            tensor = new.get(stem(site.path, suffix))
            if tensor is None:  # a .safetensors without scales: the archive's stays
                notes.append(f"{site.path}: no lora_scale given, the archive's is kept")
                continue
            dtype = _dtype_of(header, name)
            if tensor.dtype != dtype and suffix != "lora_scale":
                cast.add(f"{tensor.dtype} -> {dtype}")
            t = tensor.detach().to("cpu", dtype).reshape(header.shape).contiguous()
            payloads[name] = dat.encode_tensor(t)
    if cast:
        notes.append(f"adapter tensors cast to the archive's dtype ({', '.join(sorted(cast))})")
    for note in notes:
        logger.info("%s", note)
    changed: list[str] = []
    producers = _producers(Path(archive), payloads, changed)
    target = write_archive(out, producers, overwrite=overwrite, compresslevel=compresslevel)
    result = SwapResult(
        target, sorted(payloads), sorted(changed), sum(len(payloads[n]) for n in changed),
        sum(sizes.values()), time.perf_counter() - start, notes,
        _linked_bytes(Path(archive), target, sizes),
    )  # fmt: skip
    logger.info("%s", result)
    return result


def _linked_bytes(base: Path, out: Path, sizes: dict[str, int]) -> int:
    if not (base.is_dir() and out.is_dir()):
        return 0
    return sum(n for name, n in sizes.items() if os.path.samefile(base / name, out / name))


def _producers(src: Path, payloads: dict[str, bytes], changed: list[str]) -> Iterator[FileProducer]:
    """Every file of ``src`` in its order, the adapter files replaced by ``payloads`` (those
    that differ from the old ones are added to ``changed``). A tar is read in one streaming
    pass: each member is read when the writer asks for it."""

    def produce(name: str, read: Callable[[], bytes]) -> Callable[[], bytes]:
        def content() -> bytes:
            old = read()
            if name not in payloads:
                return old
            if old != payloads[name]:
                changed.append(name)
            return payloads[name]

        return content

    if src.is_dir():  # unchanged files are hard-linked where the file system allows
        for name in scan_archive(src, dat_headers_only=True)[0]:
            path = src / name
            yield name, produce(name, path.read_bytes) if name in payloads else (lambda p=path: p)
        return
    with _open_tar(src) as tar:
        for member in tar:
            _check_member(src, member)
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            name = member_path(member.name)
            yield name, produce(name, handle.read)
