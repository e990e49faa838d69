"""Orthanc as a source: its change feed → ``DicomInstanceReceived`` events.

Whatever reaches Orthanc by a route other than our listener (a C-STORE to Orthanc's own
port, STOW-RS, an upload in Orthanc Explorer or through REST, a viewer's save, a study
retrieved by C-MOVE/C-GET) becomes the same event the listener publishes, without a
staged file (the pixels are already archived). One module per job:

- :mod:`.changes`: pages of Orthanc's change log, the first position, gap detection (pure);
- :mod:`.instances`: instance ids → events, with bulk reads of Orthanc;
- :mod:`.corrections`: a DICOM SEG saved outside the API → a correction in the review history;
- :mod:`.checkpoint`: the feed's position, kept in the view store;
- :mod:`.status`: ``/healthz`` and ``/metrics`` (last change, lag behind Orthanc, gap);
- :mod:`.feed`: ``cohortstream orthanc feed``, the loop;
- :mod:`.reconcile`: ``cohortstream orthanc reconcile``, for what the log no longer holds.

Submodules are not imported here so ``import producers.orthanc.changes`` stays light.
"""

__all__: list[str] = []
