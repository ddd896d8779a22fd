"""The NNEF ``.dat`` tensor file: a 128-byte header followed by the payload.

Header layout (little endian)::

    0   2 bytes   magic 0x4E 0xEF
    2   2 bytes   version major, minor (1, 0)
    4   u32       data length in bytes
    8   u32       rank
    12  8 x u32   dims (unused ones are 0)
    44  u32       bits per item (0xFFFFFFFF for tract block types)
    48  u16       item type
    50  u16       vendor (0 = Khronos, 0x5254 = tract)
    52  32 bytes  reserved
    84  11 x u32  padding

Khronos item types: 0 float, 1 unsigned int, 2 quantized (unused here),
3 signed int (tract reads 3 and 4 as signed), 5 bool: 8 bits, one item per byte (tract reads
bits 1 as packed bits and refuses a 1-bit item type 4; archives written so before are still
read here).
tract's vendor types are listed in :class:`TractItemType`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np
import torch

from t2n_core.errors import ArchiveFormatError

HEADER_SIZE = 128
MAGIC = b"\x4e\xef"
TRACT_VENDOR = (ord("T") << 8) | ord("R")
_HEADER = struct.Struct("<2sBBII8IIHH32s11I")
assert _HEADER.size == HEADER_SIZE


class KhronosItemType(enum.IntEnum):
    FLOAT = 0
    UINT = 1
    QUANTIZED = 2
    INT = 3
    BOOL = 5


class TractItemType(enum.IntEnum):
    """tract's vendor item types (vendor code 0x5254)."""

    Q4_0_INTERLEAVED = 0x2040  # older packing: not emitted
    Q4_0 = 0x3040  # blocks of 32 values: f16 scale + 16 bytes of nibbles
    Q8_1 = 0x3080  # loads, but no x86-64 matmul kernel in tract 0.23.9: not emitted
    I64 = 0x1040  # not emitted; Khronos INT/64 is used instead


_TORCH_TO_ITEM: dict[torch.dtype, tuple[KhronosItemType, int]] = {
    torch.float32: (KhronosItemType.FLOAT, 32),
    torch.float16: (KhronosItemType.FLOAT, 16),
    torch.float64: (KhronosItemType.FLOAT, 64),
    torch.int64: (KhronosItemType.INT, 64),
    torch.int32: (KhronosItemType.INT, 32),
    torch.int16: (KhronosItemType.INT, 16),
    torch.int8: (KhronosItemType.INT, 8),
    torch.uint8: (KhronosItemType.UINT, 8),
    torch.bool: (KhronosItemType.BOOL, 8),
}
_ITEM_TO_NUMPY: dict[tuple[int, int], np.dtype] = {
    (KhronosItemType.FLOAT, 32): np.dtype("<f4"),
    (KhronosItemType.FLOAT, 16): np.dtype("<f2"),
    (KhronosItemType.FLOAT, 64): np.dtype("<f8"),
    (KhronosItemType.INT, 64): np.dtype("<i8"),
    (KhronosItemType.INT, 32): np.dtype("<i4"),
    (KhronosItemType.INT, 16): np.dtype("<i2"),
    (KhronosItemType.INT, 8): np.dtype("i1"),
    (KhronosItemType.UINT, 8): np.dtype("u1"),
    (KhronosItemType.UINT, 16): np.dtype("<u2"),
    (KhronosItemType.UINT, 32): np.dtype("<u4"),
    (KhronosItemType.UINT, 64): np.dtype("<u8"),
    (KhronosItemType.BOOL, 8): np.dtype("?"),
    (4, 1): np.dtype("?"),  # bool as t2n wrote it before (tract refused it)
    (4, 8): np.dtype("?"),
}


def supported_dtypes() -> list[torch.dtype]:
    return list(_TORCH_TO_ITEM)


@dataclass(frozen=True)
class DatHeader:
    """All 128 bytes of a ``.dat`` header.

    >>> h = DatHeader.for_dtype(torch.float32, (2, 3))
    >>> DatHeader.unpack(h.pack()) == h
    True
    """

    data_length: int
    shape: tuple[int, ...]
    bits_per_item: int
    item_type: int
    vendor: int = 0

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, shape: tuple[int, ...]) -> DatHeader:
        if dtype not in _TORCH_TO_ITEM:
            raise ArchiveFormatError(
                f"no .dat item type for {dtype}; supported: {sorted(map(str, _TORCH_TO_ITEM))}"
            )
        item, bits = _TORCH_TO_ITEM[dtype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count if item == KhronosItemType.BOOL else count * bits // 8
        return cls(nbytes, tuple(shape), bits, int(item))

    @classmethod
    def for_tract_type(
        cls, item_type: TractItemType | int, shape: tuple[int, ...], data_length: int
    ) -> DatHeader:
        return cls(data_length, tuple(shape), 0xFFFFFFFF, int(item_type), TRACT_VENDOR)

    def pack(self) -> bytes:
        if len(self.shape) > 8:
            raise ArchiveFormatError(f".dat supports rank <= 8, got shape {self.shape}")
        dims = list(self.shape) + [0] * (8 - len(self.shape))
        return _HEADER.pack(
            MAGIC, 1, 0, self.data_length, len(self.shape), *dims,
            self.bits_per_item, self.item_type, self.vendor, b"\0" * 32, *([0] * 11),
        )  # fmt: skip

    @classmethod
    def unpack(cls, raw: bytes, name: str = "tensor") -> DatHeader:
        """The header at the start of ``raw``; ``name`` (the file) is named in errors."""
        if len(raw) < HEADER_SIZE:
            raise ArchiveFormatError(
                f"{name} is truncated: {len(raw)} bytes, a .dat header alone has {HEADER_SIZE}"
            )
        if raw[:2] != MAGIC:
            raise ArchiveFormatError(
                f"{name} is not an NNEF .dat file (it starts with {bytes(raw[:2])!r}, not "
                f"{MAGIC!r})"
            )
        fields = _HEADER.unpack(raw[:HEADER_SIZE])
        length, rank = fields[3], fields[4]
        dims = fields[5 : 5 + 8]
        bits, item, vendor = fields[13], fields[14], fields[15]
        return cls(length, tuple(dims[:rank]), bits, item, vendor)

    @property
    def is_tract_type(self) -> bool:
        return self.vendor == TRACT_VENDOR

    def numpy_dtype(self) -> np.dtype:
        key = (self.item_type, self.bits_per_item)
        if self.vendor != 0 or key not in _ITEM_TO_NUMPY:
            raise ArchiveFormatError(
                f"item type {self.item_type:#x} (vendor {self.vendor:#x}, "
                f"{self.bits_per_item} bits) has no numpy equivalent"
            )
        return _ITEM_TO_NUMPY[key]

    def type_name(self) -> str:
        if self.is_tract_type:
            try:
                return TractItemType(self.item_type).name.lower()
            except ValueError:
                return f"tract:{self.item_type:#x}"
        try:
            dt = self.numpy_dtype()
        except ArchiveFormatError:
            return f"khronos:{self.item_type}/{self.bits_per_item}"
        if dt.kind == "b":
            return "bool"
        return f"{dt.kind}{dt.itemsize * 8}"


def tensor_buffer(tensor: torch.Tensor) -> memoryview:
    """Little-endian payload of a tensor, without the header: a view, no copy when the
    tensor is a contiguous CPU tensor (so writing a large weight costs no extra memory)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        raise ArchiveFormatError("bf16 must be converted before writing (.dat has no bf16 type)")
    array = t.contiguous().numpy()
    return memoryview(array.reshape(-1)).cast("B")


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian payload of a tensor, without the header, as a copy."""
    return bytes(tensor_buffer(tensor))


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """Header and payload of ``tensor`` as one ``.dat`` file content.

    >>> len(encode_tensor(torch.zeros(2, 3)))
    152
    """
    header = DatHeader.for_dtype(tensor.dtype, tuple(tensor.shape))
    return header.pack() + tensor_bytes(tensor)


def decode_array(raw: bytes) -> np.ndarray:
    """Read a standard-typed ``.dat`` content back into a numpy array."""
    header = DatHeader.unpack(raw)
    dtype = header.numpy_dtype()
    payload = raw[HEADER_SIZE : HEADER_SIZE + header.data_length]
    return np.frombuffer(payload, dtype=dtype).reshape(header.shape)
