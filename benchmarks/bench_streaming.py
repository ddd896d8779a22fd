"""The included streaming keyword spotter in tract: archive size, peak RSS and real-time factor
of the pulsed model (10 s of 16 kHz audio in 10 ms chunks), f32 vs q4_0 vs minmax 4-bit.

Each archive runs in a fresh child process that imports tract and numpy only and reads its own
VmHWM. The real-time factor is the time spent in ``state.run`` over all chunks divided by the
audio's duration (below 1: faster than real time).
Usage: python -m benchmarks.bench_streaming [--seconds 10] [--chunk-ms 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

import t2n_core
from benchmarks._child import run_child
from t2n_core.examples import StreamingKeywordSpotter, streaming_keyword_spotter
from t2n_core.summary import human_bytes
from t2n_quant import quantize_model

CHILD = """
import json, time
import numpy as np, tract
from benchmarks._child import vm_hwm_bytes
baseline = vm_hwm_bytes()
model = tract.nnef().with_tract_transformers().with_tract_extra().with_pulse().load({path!r})
model.transform(tract.Pulse({chunk!r}, symbol="S"))
state = model.into_runnable().spawn_state()
wave = np.random.default_rng(0).standard_normal((1, {samples}), dtype=np.float32) * 0.1
chunk = {chunk}
seconds = 0.0
frames = 0
for start in range(0, {samples}, chunk):
    piece = np.ascontiguousarray(wave[:, start:start + chunk])
    t0 = time.perf_counter()
    out = state.run([piece])[0].to_numpy()
    seconds += time.perf_counter() - t0
    frames += out.shape[1]
print(json.dumps(dict(baseline=baseline, peak=vm_hwm_bytes(), seconds=seconds, frames=frames,
                      finite=bool(np.isfinite(out).all()))))
"""

CODECS = ("f32", "q4_0", "minmax:4:g32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chunk-ms", type=int, default=10)
    args = parser.parse_args()
    rate = StreamingKeywordSpotter.sample_rate
    chunk = rate * args.chunk_ms // 1000
    samples = int(args.seconds * rate)
    base, wave = streaming_keyword_spotter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec in CODECS:
            model = copy.deepcopy(base)
            if codec != "f32":
                quantize_model(model, codec, progress=False)
            path = os.path.join(tmp, f"kws_{codec.replace(':', '_')}.nnef.tgz")
            result = t2n_core.export(model, (wave,), path, input_names=["wave"],
                                     streaming_axis={"wave": 1}, check=True, atol=1e-3,
                                     progress=False)  # fmt: skip
            stats = run_child(CHILD.format(path=path, chunk=chunk, samples=samples))
            assert stats["finite"]
            rows.append((codec, os.path.getsize(path), result.total_tensor_bytes, stats))
    print(f"streaming keyword spotter, {args.seconds:g} s of audio in {args.chunk_ms} ms chunks "
          f"({samples // chunk} chunks), tract pulsed, one thread")  # fmt: skip
    print(f"{'codec':<13} {'archive':>9} {'tensors':>9} {'peak RSS':>9} {'net':>9} "
          f"{'run s':>7} {'RTF':>7} {'ms/chunk':>9}")  # fmt: skip
    for codec, size, tensors, s in rows:
        net = s["peak"] - s["baseline"]
        rtf = s["seconds"] / args.seconds
        per_chunk = 1000 * s["seconds"] / (samples // chunk)
        print(f"{codec:<13} {human_bytes(size):>9} {human_bytes(tensors):>9} "
              f"{human_bytes(s['peak']):>9} {human_bytes(net):>9} {s['seconds']:>7.3f} "
              f"{rtf:>7.4f} {per_chunk:>9.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
