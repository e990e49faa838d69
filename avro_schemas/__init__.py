"""The event contracts: one Avro schema (``.avsc``) per event.

This is a package only so the schema files ship inside the wheel and can be found with
:mod:`importlib.resources`. ``history/<schema name>/v<N>.avsc`` keeps every released
version of each schema; the codec knows all of them, so messages written by an older
producer stay readable, and ``tests/unit/test_schema_compatibility.py`` proves every
version can read data written by the version before it.
"""
