"""Exports of the cohort to community formats (BIDS); reads the views and Orthanc only."""
