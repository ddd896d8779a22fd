"""One input or output of an archive as the user sees it: name, dtype, shape."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IOSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"
