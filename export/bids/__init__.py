"""BIDS export of the cohort: NIfTI via dcm2niix, phenotype tables, annotation derivatives.

Modules: :mod:`.mapping` (series → BIDS names), :mod:`.labels` (pseudonyms, date
shifts), :mod:`.imaging` (dcm2niix, scrubbing), :mod:`.derivatives` (SEG → dseg),
:mod:`.phenotype` and :mod:`.participants` (tables), :mod:`.tables` (TSV/JSON bytes),
:mod:`.writer` (atomic incremental writes, manifest), :mod:`.dataset` (the export).
"""

from export.bids.dataset import BIDS_VERSION, ExportReport, SkippedSeries, export_bids
from export.bids.errors import BidsExportError, ConversionError, MappingRuleError

__all__ = ["BIDS_VERSION", "BidsExportError", "ConversionError", "ExportReport", "MappingRuleError", "SkippedSeries", "export_bids"]
