"""The feature sink: fold events into input documents, then keep one feature document per
subject current (``views.py``), and the rebuild by replay (``rebuild.py``). Docs:
``docs/features.md``."""
