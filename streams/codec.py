"""The Avro event codec as a faust codec, so agents receive typed events.

Registered under :data:`CODEC_NAME`; a topic created with
``value_serializer=CODEC_NAME`` yields :class:`cohortstream.events.Event` models to its
agents and accepts them when sending. Decoding errors surface as the project's
:class:`cohortstream.errors.EventDecodeError` (wrapped by faust in its
``ValueDecodeError``), which the dead-letter handling of later agents relies on.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from cohortstream.codec import EventCodec
from cohortstream.events import Event

__all__ = ["CODEC_NAME", "AvroEventCodec", "register_codec"]

CODEC_NAME = "cohortstream-avro"


class AvroEventCodec(codecs.Codec):
    """faust codec for Avro single-object-encoded cohortstream events."""

    def __init__(self, event_codec: EventCodec | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._event_codec = event_codec or EventCodec()

    def _dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, Event):
            raise TypeError(f"{CODEC_NAME} encodes cohortstream events, not {type(obj).__name__}")
        return self._event_codec.encode_event(obj)

    def _loads(self, s: bytes) -> Event:
        return self._event_codec.decode_event(s)

    def clone(self, *children: Any) -> Any:
        # Chaining (``codec | other``) clones; keep this codec's registry in the copy.
        return type(self)(self._event_codec, children=self.children + children, **self.kwargs)


def register_codec(event_codec: EventCodec | None = None) -> str:
    """Register the codec with faust (idempotent) and return its name."""
    codecs.register(CODEC_NAME, AvroEventCodec(event_codec))
    return CODEC_NAME
