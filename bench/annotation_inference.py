"""How fast does the annotation core turn a received series into a DICOM SEG?

For N phantom MR series (default 5) it times, per series, the path the worker runs once
a series is complete: read the instances from bytes and build the volume
(``volume_from_datasets``), segment it (``predict``: preprocessing, sliding-window
inference, softmax, uncertainty) and build + encode the BINARY SEG (highdicom). It
prints seconds per stage and per series, series/s, the device, and the mean Dice against
the phantoms' truth so a fast but wrong run is visible. Phantom generation is not timed.
No services needed.

Run: ``.venv/bin/python -m bench.annotation_inference [--series 5] [--shape 64 128 128]
[--device auto|cpu|cuda] [--threads 1] [--sw-batch-size 4] [--no-amp]``
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import pydicom
import torch

from consumers.annotation.inference import predict, resolve_device
from consumers.annotation.metrics import dice
from consumers.annotation.models import PHANTOM_SPEC, load_model
from consumers.annotation.phantoms import phantom_series
from consumers.annotation.seg import build_segmentation
from consumers.annotation.volume import volume_from_datasets


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5, help="phantom series to process (timed)")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    parser.add_argument("--warmup", type=int, default=1, help="untimed series first (model load, CUDA init)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(PHANTOM_SPEC, device=device)
    total = args.warmup + args.series
    print(f"generating {total} phantom series of shape {tuple(args.shape)} ...", flush=True)
    phantoms = []
    for i in range(total):
        datasets, truth = phantom_series(1000 + i, args.shape)
        phantoms.append(([_encode(ds) for ds in datasets], truth))

    stages: dict[str, list[float]] = {"volume": [], "inference": [], "seg": [], "series": []}
    dices = []
    device_name = ""
    for i, (blobs, truth) in enumerate(phantoms):
        t0 = time.perf_counter()
        volume = volume_from_datasets([pydicom.dcmread(io.BytesIO(blob)) for blob in blobs])
        t1 = time.perf_counter()
        result = predict(model, volume.array, volume.spacing, sw_batch_size=args.sw_batch_size, amp=not args.no_amp)
        t2 = time.perf_counter()
        seg_bytes = _encode(build_segmentation(volume, result.labels, PHANTOM_SPEC))
        t3 = time.perf_counter()
        device_name = result.device
        if i < args.warmup:
            continue
        stages["volume"].append(t1 - t0)
        stages["inference"].append(t2 - t1)
        stages["seg"].append(t3 - t2)
        stages["series"].append(t3 - t0)
        dices.append(dice(result.labels, truth))
        assert seg_bytes

    total_s = sum(stages["series"])
    print(
        f"device: {device_name}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
        f"sw_batch_size {args.sw_batch_size}  amp {not args.no_amp and device.type == 'cuda'}"
    )
    print(f"series: {args.series} of {tuple(args.shape)} voxels ({len(phantoms[0][0])} instances each)")
    for stage in ("volume", "inference", "seg"):
        values = stages[stage]
        print(f"  {stage:<10} mean {statistics.fmean(values):8.3f} s   median {statistics.median(values):8.3f} s")
    print(f"seconds/series: {total_s / args.series:.3f}   series/s: {args.series / total_s:.3f}")
    print(f"mean Dice vs truth: {statistics.fmean(dices):.4f}")


if __name__ == "__main__":
    main()
