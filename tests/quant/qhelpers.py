"""Helpers shared by the t2n_quant tests: accuracy metrics and a hand-written tract graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from t2n_core.nnef.dat import DatHeader
from t2n_core.storage import Encoding
from t2n_quant.compare import sqnr

#: every accuracy assertion uses these thresholds: the least SQNR a codec of that many
#: bits reaches on Gaussian weights with min-max calibration, any group size (measured
#: worst case: symmetric per-channel, minus about 0.4 dB)
MIN_SQNR_DB = {2: 2.5, 3: 10.0, 4: 17.5, 5: 24.0, 6: 30.0, 8: 42.5}


#: signal-to-quantization-noise ratio in dB (higher is better): the library's own
sqnr_db = sqnr


def _literal(value: object) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return str(value)


def write_weight_graph(
    enc: Encoding, label: str, directory: Path, body: str = "", inputs: tuple[str, ...] = ()
) -> Path:
    """Write graph.nnef + .dat files declaring one encoded weight named ``w``.

    ``body`` lines may use ``w`` and the graph ``inputs`` (declared in the body with
    ``tract_core_external``) and must define ``y``; without a body the graph outputs ``w``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["version 1.0;", ""]
    extensions = set(enc.extensions) | {"tract_registry tract_core"}
    lines += [f"extension {e};" for e in sorted(extensions)]
    lines += ["", *(text.strip() + "\n" for _, text in sorted(enc.fragments.items()))]
    output = "y" if body else "w"
    lines += [f"graph G({', '.join(inputs)}) -> ({output})", "{"]
    single = enc.call is None
    for ev in enc.variables:
        kind = "integer" if ev.dtype is not None and not ev.dtype.is_floating_point else "scalar"
        vname = "w" if single else f"w{ev.suffix}"
        lines.append(
            f"  {vname} = variable<{kind}>(label = '{label}{ev.suffix}', "
            f"shape = {_literal(list(ev.shape))});"
        )
        payload = ev.data()
        if ev.custom_item_type is not None:
            header = DatHeader.for_tract_type(ev.custom_item_type, ev.shape, len(payload))
        else:
            header = DatHeader.for_dtype(ev.dtype, ev.shape)
        (directory / f"{label}{ev.suffix}.dat").write_bytes(header.pack() + payload)
    if not single:
        frag, suffixes, attrs = enc.call
        args = [f"w{s}" for s in suffixes] + [f"{k} = {_literal(v)}" for k, v in attrs.items()]
        lines.append(f"  w = {frag}({', '.join(args)});")
    lines += [f"  {line}" for line in body.splitlines() if line.strip()]
    lines.append("}")
    (directory / "graph.nnef").write_text("\n".join(lines) + "\n")
    return directory


def run_tract(directory: Path, inputs: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Load ``directory`` with tract and run it."""
    import tract

    model = tract.nnef().with_tract_transformers().with_tract_extra().load(str(directory))
    outputs = model.into_runnable().run(inputs or [])
    return [o.to_numpy() for o in outputs]
