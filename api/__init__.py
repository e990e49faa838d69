"""The retrieval and review API: annotation suggestions, their review, and a MONAI Label
compatible subset for viewers (OHIF's MONAI Label extension) and ``monailabel`` clients.

Modules are small and have one job each: :mod:`api.errors` (the JSON error shape),
:mod:`api.pagination` (cursors and limits), :mod:`api.seg_upload` (checking an uploaded
DICOM SEG), :mod:`api.reviews` (turning a decision into an ``AnnotationReviewed`` event),
:mod:`api.annotation_store` (read-only queries of the ``annotations`` view),
:mod:`api.services` (connections shared by the routers), :mod:`api.annotations` and
:mod:`api.monailabel` (the routers) and :mod:`api.app` (the application and its lifespan).
"""

__all__: list[str] = []
