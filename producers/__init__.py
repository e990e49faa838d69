"""Edges that turn the outside world into events: the DICOM C-STORE listener (``producers.dicom``)."""
