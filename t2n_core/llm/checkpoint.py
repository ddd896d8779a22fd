"""A local Hugging Face checkpoint directory, read without loading its weights.

``open_checkpoint`` checks the directory (config.json, safetensors shards and their index,
tokenizer files) and parses every shard's header, so that a missing, truncated or corrupted
file is reported, by name, before anything is written. ``streamed_model`` builds the model
from the config with its parameters on the meta device, then gives each parameter a
:class:`~t2n_core.deferred.DeferredTensor` that reads its bytes from the shard when (and only
when) they are needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2n_core.deferred import DeferredTensor
from t2n_core.errors import CheckpointError, CheckpointLayoutError

logger = logging.getLogger(__name__)

#: safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
#: files a tokenizer may need; copied next to the archive when present
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip
#: any one of these is enough for transformers to build a tokenizer
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
INDEX_FILE = "model.safetensors.index.json"
#: reads of at least this many bytes map the file's pages instead of copying them
MAP_BYTES = 1 << 20


@dataclass(frozen=True)
class ShardTensor:
    """Where one tensor's bytes lie in a safetensors shard."""

    shard: Path
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    def read_rows(self, first: int, last: int) -> torch.Tensor:
        """Rows ``first:last`` of dim 0 (the whole tensor when rank 0), read from the file.

        From :data:`MAP_BYTES` on, the rows are the file's pages mapped into memory (private
        and copy-on-write: writing to the tensor never changes the file) instead of copied
        into a new buffer: the kernel's copy out of its page cache cost more CPU than
        converting the values. The mapping goes with the last tensor that uses it."""
        row_bytes = (self.end - self.begin) // max(self.shape[0], 1) if self.shape else 0
        if not self.shape:
            first, last, row_bytes = 0, 1, self.end - self.begin
        size = (last - first) * row_bytes
        offset = self.begin + first * row_bytes
        with open(self.shard, "rb") as f:
            if size >= MAP_BYTES:
                buffer = self._mapped(f, offset, size)
            else:
                buffer = torch.empty(size, dtype=torch.uint8)
                f.seek(offset)
                self._check_size(f.readinto(memoryview(buffer.numpy())), size)
        return (
            buffer.view(self.dtype).reshape(last - first, *self.shape[1:])
            if self.shape
            else (buffer.view(self.dtype).reshape(()))
        )

    def _mapped(self, f: Any, offset: int, size: int) -> torch.Tensor:
        # a page past the file's end would kill the process (SIGBUS) when read: check first
        self._check_size(min(size, max(0, os.fstat(f.fileno()).st_size - offset)), size)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        pages = mmap.mmap(f.fileno(), offset + size - start, flags=mmap.MAP_PRIVATE,
                          prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)  # fmt: skip
        return torch.frombuffer(pages, dtype=torch.uint8, count=size, offset=offset - start)

    def _check_size(self, got: int, size: int) -> None:
        if got != size:
            raise CheckpointError(
                f"shard {self.shard.name} ended while reading tensor {self.key!r} "
                f"({got} of {size} bytes): the file is truncated; download it again"
            )


@dataclass
class Checkpoint:
    """What a checkpoint directory holds; ``tensors`` maps checkpoint keys to their bytes."""

    directory: Path
    config: Any  # transformers.PretrainedConfig
    tensors: dict[str, ShardTensor]
    shards: list[Path]
    tokenizer_files: list[str] = field(default_factory=list)
    trust_remote_code: bool = False

    @property
    def has_tokenizer(self) -> bool:
        return any(name in self.tokenizer_files for name in TOKENIZER_VOCAB_FILES)

    @property
    def architecture(self) -> str:
        names = getattr(self.config, "architectures", None) or [type(self.config).__name__]
        return str(names[0])

    @property
    def weight_bytes(self) -> int:
        return sum(t.end - t.begin for t in self.tensors.values())


def open_checkpoint(directory: str | os.PathLike, *, trust_remote_code: bool = False) -> Checkpoint:
    """Read the config and every shard header of a local checkpoint directory.

    >>> ckpt = open_checkpoint("path/to/llama")                     # doctest: +SKIP
    >>> ckpt.architecture, len(ckpt.shards)                         # doctest: +SKIP
    ('LlamaForCausalLM', 2)
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist (or is not a directory)")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{config_path} is missing: a Hugging Face checkpoint directory needs its "
            "config.json (model_type, sizes) beside the weights"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            root, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise CheckpointError(f"{config_path} cannot be read by transformers: {exc}") from exc
    shards = _shard_paths(root)
    tensors: dict[str, ShardTensor] = {}
    for shard in shards:
        for key, entry in read_shard_header(shard).items():
            if key in tensors:
                raise CheckpointError(
                    f"tensor {key!r} is in both {tensors[key].shard.name} and {shard.name}"
                )
            tensors[key] = entry
    tokenizer = [name for name in TOKENIZER_FILES if (root / name).is_file()]
    return Checkpoint(root, config, tensors, shards, tokenizer, trust_remote_code)


def _shard_paths(root: Path) -> list[Path]:
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from exc
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{INDEX_FILE} in {root} names shard(s) that are missing: {missing}; "
                "download them too"
            )
        return [root / n for n in names]
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(root.glob("*.safetensors"))
    if others:
        return others
    pickled = sorted(p.name for p in root.glob("*.bin"))
    hint = (
        f" (found {pickled}: pickled PyTorch weights, which t2n does not load; convert them "
        "with model.save_pretrained(dir, safe_serialization=True))"
        if pickled
        else ""
    )
    raise CheckpointError(
        f"no weights in {root}: expected model.safetensors, or {INDEX_FILE} and its shards{hint}"
    )


def read_shard_header(path: Path) -> dict[str, ShardTensor]:
    """The tensors of a safetensors file, checked against the file's size (no data read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"shard {path.name} is truncated ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(
                f"shard {path.name} is truncated or corrupted: its header claims {header_len} "
                f"bytes, the file has {size}; download it again"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(
            f"shard {path.name} is corrupted: its header is not valid JSON ({exc}); "
            "download it again"
        ) from exc
    start = 8 + header_len
    out: dict[str, ShardTensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"shard {path.name}: tensor {key!r} has an unreadable or unsupported entry "
                f"{info!r} (supported dtypes: {sorted(SAFETENSORS_DTYPES)})"
            ) from exc
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"shard {path.name} is corrupted: tensor {key!r} {list(shape)} {info['dtype']} "
                f"needs {expected} bytes, its offsets span {end - begin}"
            )
        if start + end > size:
            raise CheckpointError(
                f"shard {path.name} is truncated: tensor {key!r} ends at byte {start + end}, "
                f"the file has {size} bytes; download it again"
            )
        out[key] = ShardTensor(path, key, dtype, shape, start + begin, start + end)
    return out


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device (buffers stay real, so that
    computed ones such as rotary frequencies keep their values)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def meta_model(ckpt: Checkpoint, dtype: torch.dtype) -> nn.Module:
    """The causal LM of ``ckpt``'s config, parameters on the meta device, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():
        try:
            model = AutoModelForCausalLM.from_config(
                ckpt.config, dtype=dtype, trust_remote_code=ckpt.trust_remote_code
            )
        except ValueError as exc:
            from t2n_core.llm.support import KNOWN_TO_WORK

            raise CheckpointError(
                f"{ckpt.directory}: transformers has no causal LM for {ckpt.architecture} "
                f"(model_type {getattr(ckpt.config, 'model_type', '?')!r}): "
                f"{str(exc).splitlines()[0]}\n"
                f"Known to export: {', '.join(KNOWN_TO_WORK)}. Pass trust_remote_code=True "
                "(--trust-remote-code) if the checkpoint ships its own modelling code."
            ) from exc
    return model.eval()


def streamed_model(
    ckpt: Checkpoint,
    dtype: torch.dtype,
    *,
    keep_f32: Callable[[nn.Module], bool] | None = None,
) -> nn.Module:
    """The model of ``ckpt`` with every parameter a DeferredTensor reading from the shards.

    Floating parameters are converted to ``dtype`` when read, except those of modules for
    which ``keep_f32(module)`` is true (kept in float32). Tied parameters stay one object.
    Persistent buffers found in the checkpoint are loaded now (they are small). Raises
    :class:`CheckpointLayoutError` when the checkpoint lacks a parameter or holds tensors the
    model does not use, i.e. when its names do not match the model's (the caller may then
    load it whole with transformers, which knows the renamings).
    """
    model = meta_model(ckpt, dtype)
    prefix = getattr(model, "base_model_prefix", "") or ""
    groups: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is not None:
                full = f"{mod_name}.{name}" if mod_name else name
                groups.setdefault(id(param), []).append((module, name, full))
    used: set[str] = set()
    missing: list[str] = []
    for users in groups.values():
        names = [full for _, _, full in users]
        entry = _find(ckpt, names, prefix)
        if entry is None:
            missing.append(names[0])
            continue
        used.update(_keys_present(ckpt, names, prefix))
        param = users[0][0]._parameters[users[0][1]]
        if tuple(param.shape) != entry.shape:
            raise CheckpointError(
                f"{entry.shard.name}: tensor {entry.key!r} has shape {list(entry.shape)}, the "
                f"model built from config.json expects {list(param.shape)}"
            )
        target = param.dtype
        if target.is_floating_point:
            f32 = keep_f32 is not None and any(keep_f32(m) for m, _, _ in users)
            target = torch.float32 if f32 else dtype
        deferred = DeferredTensor(entry.read_rows, entry.shape, target, name=names[0])
        for module, name, _ in users:
            module._parameters[name] = deferred  # type: ignore[assignment]
    for mod_name, module in model.named_modules():
        for name, buffer in module._buffers.items():
            full = f"{mod_name}.{name}" if mod_name else name
            entry = _find(ckpt, [full], prefix)
            if buffer is not None and entry is not None:
                used.add(entry.key)
                module._buffers[name] = entry.read_rows(0, entry.shape[0] if entry.shape else 1).to(
                    buffer.dtype if not buffer.is_floating_point() else dtype
                )
    unused = sorted(set(ckpt.tensors) - used)
    if missing or unused:
        raise CheckpointLayoutError(
            f"the checkpoint's tensor names do not match {type(model).__name__}'s parameters: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unused {unused[:5]}{' ...' if len(unused) > 5 else ''}"
        )
    return model


def _keys_present(ckpt: Checkpoint, names: list[str], prefix: str) -> set[str]:
    """Every checkpoint key that stores one of ``names`` (tied parameters may be saved twice)."""
    found = (_find(ckpt, [name], prefix) for name in names)
    return {entry.key for entry in found if entry is not None}


def _find(ckpt: Checkpoint, names: list[str], prefix: str) -> ShardTensor | None:
    for name in names:
        candidates = [name]
        if prefix:
            candidates += [f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
        for key in candidates:
            if key in ckpt.tensors:
                return ckpt.tensors[key]
    return None
