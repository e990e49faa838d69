"""The REDCap edge: Data Entry Trigger endpoint and full sync → ``RedcapRecordChanged`` events.

- :mod:`.trigger`: parse the DET form, check where it comes from and which project it names.
- :mod:`.api`: async REDCap API client (records, record ids, cached data dictionary), with
  bounded retries of transient errors.
- :mod:`.dictionary`: type flat-export values with the data dictionary.
- :mod:`.records`: flat rows → events.
- :mod:`.webhook`: the FastAPI app (``POST /redcap/trigger``, ``GET /healthz``).
- :mod:`.sync`: ``cohortstream redcap sync``.

Submodules are not imported here so ``import producers.redcap.dictionary`` stays light.
"""

__all__: list[str] = []
