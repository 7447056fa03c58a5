"""Protobuf messages as the JSON Triton's HTTP API writes: proto field names, 64-bit integers as numbers.

protobuf's own JSON mapping writes int64 and uint64 as strings; Triton's HTTP
answers (and so its users' code) have numbers.  Used by the daemon for model
configs and by the client to give gRPC answers the shape of HTTP ones.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def to_dict(message: Message) -> dict[str, Any]:
    return _numbers(message, json_format.MessageToDict(message, preserving_proto_field_name=True))


def _numbers(message: Any, doc: dict[str, Any]) -> dict[str, Any]:
    for field, value in message.ListFields():
        if field.name not in doc:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    for key in doc[field.name]:
                        _numbers(value[key], doc[field.name][key])
            elif isinstance(doc[field.name], list):
                for item, sub in zip(value, doc[field.name]):
                    _numbers(item, sub)
            else:
                _numbers(value, doc[field.name])
        elif field.type in _INT64:
            raw = doc[field.name]
            doc[field.name] = [int(v) for v in raw] if isinstance(raw, list) else int(raw)
    return doc
