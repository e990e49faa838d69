"""Errors of the BIDS export; each message names the setting, file or series concerned."""

from __future__ import annotations

from cohortstream.errors import CohortStreamError

__all__ = ["BidsExportError", "ConversionError", "Dcm2niixNotFoundError", "MappingRuleError"]


class BidsExportError(CohortStreamError):
    """The export cannot go on (bad settings, an output file that cannot be written)."""


class MappingRuleError(BidsExportError, ValueError):
    """A series-to-BIDS mapping rule is invalid; the message names the rule and field."""


class ConversionError(BidsExportError):
    """dcm2niix or the SEG conversion failed for one series (the export goes on without it)."""


class Dcm2niixNotFoundError(BidsExportError):
    """The dcm2niix executable (setting ``COHORTSTREAM_BIDS_DCM2NIIX``) is not installed:
    no series can be converted, so the export stops before fetching any image."""
