"""cohortstream: a research cohort's DICOM, REDCap and EHR data as one stream of typed events.

The core package holds what every edge (producers), stream (streams) and sink
(consumers) shares: settings, the project's errors, the Avro event contract and its codec.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
