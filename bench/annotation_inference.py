"""How fast does the annotation core turn a received series into a DICOM SEG?

For N series it times, per series, the path the worker runs once a series is complete:
fetch the instances, read them and build the volume (``volume_from_datasets``), segment
it (``predict``) and build + encode the BINARY SEG (highdicom). It prints seconds per
stage and per series, series/s, the device, and the mean Dice against the truth so a
fast but wrong run is visible. Making the test series is not timed.

``--model phantom`` (default): the demo model on sphere phantoms of ``--shape``.
``--model brain``: the brain-extraction model (deepbet) on nilearn's MNI152 T1 template
(1 mm, 197×233×189), written as DICOM by the project's series writer; Dice against
nilearn's MNI152 brain mask. With ``COHORTSTREAM_ENV_FILE`` (a running stack, e.g.
``.stack-test/stack.env``) the series is stored in that Orthanc once and "fetch" is the
worker's own read of it (``OrthancClient.series_instances``); without it, fetch is
reported as not measured and the instances come from memory.

Run: ``.venv/bin/python -m bench.annotation_inference [--model phantom|brain] [--series 5]
[--shape 64 128 128] [--device auto|cpu|cuda] [--threads 1] [--sw-batch-size 4] [--no-amp]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import time

import numpy as np
import pydicom
import torch

from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings
from consumers.annotation.brain import BRAIN_SPEC
from consumers.annotation.inference import predict, resolve_device
from consumers.annotation.metrics import dice
from consumers.annotation.models import PHANTOM_SPEC, ModelSpec, load_model
from consumers.annotation.phantoms import phantom_series
from consumers.annotation.seg import build_segmentation
from consumers.annotation.series_writer import SeriesInfo, lps_slices_from_nifti, series_from_volume
from consumers.annotation.volume import volume_from_datasets


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _brain_series(count: int) -> list[tuple[list[pydicom.Dataset], np.ndarray]]:
    """``count`` copies of the MNI152 template as DICOM series (alternating stacking order)
    with the brain mask in the volume's slice order."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    array, affine = lps_slices_from_nifti(template.get_fdata(), template.affine)
    reference, _ = lps_slices_from_nifti(mask.get_fdata() > 0.5, mask.affine)
    run = f"{time.time_ns()}"
    return [
        (
            series_from_volume(
                array, affine, SeriesInfo("BENCH-BRAIN", run, f"s{i}", series_number=i + 1), descending=bool(i % 2)
            ),
            reference.astype(np.uint8),
        )
        for i in range(count)
    ]


async def _fetch_from_orthanc(
    settings: Settings, datasets: list[pydicom.Dataset], blobs: list[bytes]
) -> tuple[float, list[bytes]]:
    """Store the series in Orthanc (untimed), then time the worker's read of it."""
    async with OrthancClient(settings) as archive:
        for blob in blobs:
            await archive.store_bytes(blob, "bench instance")
        first = datasets[0]
        started = time.perf_counter()
        files = await archive.series_instances(
            str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.PatientID), expected=len(blobs)
        )
        return time.perf_counter() - started, files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("phantom", "brain"), default="phantom")
    parser.add_argument("--series", type=int, default=5, help="series to process (timed)")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    parser.add_argument("--warmup", type=int, default=1, help="untimed series first (model load, CUDA init)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec: ModelSpec = BRAIN_SPEC if args.model == "brain" else PHANTOM_SPEC
    model = load_model(spec, device=device)
    total = args.warmup + args.series
    env_file = os.environ.get("COHORTSTREAM_ENV_FILE")
    settings = Settings.load(env_file) if env_file else None
    if args.model == "brain":
        print(f"writing {total} DICOM series of nilearn's MNI152 T1 template (1 mm) ...", flush=True)
        made = _brain_series(total)
    else:
        print(f"generating {total} phantom series of shape {tuple(args.shape)} ...", flush=True)
        made = [phantom_series(1000 + i, args.shape) for i in range(total)]
    series = [(datasets, [_encode(ds) for ds in datasets], truth) for datasets, truth in made]

    stages: dict[str, list[float]] = {"fetch": [], "volume": [], "inference": [], "seg": [], "series": []}
    dices = []
    device_name = ""
    for i, (datasets, blobs, truth) in enumerate(series):
        fetch_s = 0.0
        if settings is not None:
            fetch_s, blobs = asyncio.run(_fetch_from_orthanc(settings, datasets, blobs))
        t0 = time.perf_counter()
        volume = volume_from_datasets([pydicom.dcmread(io.BytesIO(blob)) for blob in blobs])
        t1 = time.perf_counter()
        result = predict(
            model,
            volume.array,
            volume.spacing,
            affine=volume.affine,
            sw_batch_size=args.sw_batch_size,
            amp=not args.no_amp,
            cpu_threads=args.threads if device.type == "cpu" else None,
        )
        t2 = time.perf_counter()
        seg_bytes = _encode(build_segmentation(volume, result.labels, spec))
        t3 = time.perf_counter()
        device_name = result.device
        if i < args.warmup:
            continue
        stages["fetch"].append(fetch_s)
        stages["volume"].append(t1 - t0)
        stages["inference"].append(t2 - t1)
        stages["seg"].append(t3 - t2)
        stages["series"].append(fetch_s + t3 - t0)
        dices.append(dice(result.labels, truth))
        assert seg_bytes

    total_s = sum(stages["series"])
    print(
        f"model: {spec.name} {spec.version}  device: {device_name}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}  sw_batch_size {args.sw_batch_size}  "
        f"amp {not args.no_amp and device.type == 'cuda'}"
    )
    shape = volume_from_datasets(series[0][0]).shape if args.model == "brain" else tuple(args.shape)
    print(f"series: {args.series} of {shape} voxels ({len(series[0][1])} instances each)")
    for stage in ("fetch", "volume", "inference", "seg"):
        values = stages[stage]
        if stage == "fetch" and settings is None:
            print(f"  {stage:<10} not measured (set COHORTSTREAM_ENV_FILE to a running stack's env file)")
            continue
        print(f"  {stage:<10} mean {statistics.fmean(values):8.3f} s   median {statistics.median(values):8.3f} s")
    print(f"seconds/series: {total_s / args.series:.3f}   series/s: {args.series / total_s:.3f}")
    print(f"mean Dice vs truth: {statistics.fmean(dices):.4f}")


if __name__ == "__main__":
    main()
