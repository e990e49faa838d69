"""BIDS export of the cohort: NIfTI via dcm2niix, phenotype tables, annotation derivatives.

Modules, by job: :mod:`.selection` (what is read from the views and REDCap),
:mod:`.fetching` (DICOM files from Orthanc, through :mod:`cohortstream.orthanc`),
:mod:`.mapping` (series → BIDS datatype, suffix, entities) and :mod:`.naming` (BIDS
paths), :mod:`.labels` (pseudonyms, date shifts), :mod:`.imaging` (dcm2niix, scrubbing),
:mod:`.derivatives` (SEG → dseg), :mod:`.phenotype` and :mod:`.participants` (tables),
:mod:`.tables` (TSV/JSON bytes), :mod:`.writer` (atomic incremental writes, manifest),
:mod:`.dataset_files` (README, descriptions, CHANGES, tables), :mod:`.dataset` (the export).
"""

from export.bids.dataset import BIDS_VERSION, ExportReport, SkippedSeries, export_bids
from export.bids.errors import BidsExportError, ConversionError, Dcm2niixNotFoundError, MappingRuleError

__all__ = [
    "BIDS_VERSION",
    "BidsExportError",
    "ConversionError",
    "Dcm2niixNotFoundError",
    "ExportReport",
    "MappingRuleError",
    "SkippedSeries",
    "export_bids",
]
