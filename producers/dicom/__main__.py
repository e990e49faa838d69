"""``python -m producers.dicom``: run the DICOM listener (``cohortstream dicom-scp`` does the same)."""

from producers.dicom.processes import main

raise SystemExit(main())
