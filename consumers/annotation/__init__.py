"""The annotation worker's pure core: DICOM series → volume → model → DICOM SEG.

Nothing in this package talks to Kafka, Orthanc or MongoDB; the async worker that does
imports these modules and runs :func:`consumers.annotation.inference.infer_volume` in an
executor. Modules are imported one by one (``consumers.annotation.volume`` …) so that a
process that only needs geometry does not pay for importing torch.
"""

__all__: list[str] = []
