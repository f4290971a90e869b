"""Message types of a bag: a ``rosbags`` typestore built from the bag's own definitions.

A bag carries the definition of every message type it holds (MCAP schemas), which match its data
even when the type has changed since; any type whose definition is missing (lost with the damaged
part of a bag) comes from the built-in ROS 2 types and the package's own
(:mod:`qt_ros.episodes.interfaces`). :func:`deserialize_cdr` decodes a message, accepting the
trailing alignment padding serializers leave.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from qt_ros.episodes.interfaces import default_typestore

_STORES: dict[tuple, Typestore] = {}


def typestore_for_schemas(schemas: Iterable[Any]) -> Typestore:
    """A typestore for these MCAP schemas, built once per process (building one registers
    every type as a Python class, which costs far more than reading a short bag)."""
    schemas = tuple(schemas)
    key = tuple(sorted((s.name, s.encoding, bytes(s.data)) for s in schemas))
    store = _STORES.get(key)
    if store is None:
        store = get_typestore(Stores.EMPTY)
        for schema in schemas:
            register_schema(store, schema)
        fill_typestore(store)
        if len(_STORES) >= 16:
            _STORES.pop(next(iter(_STORES)))
        _STORES[key] = store
    return store


def fill_typestore(store: Typestore) -> None:
    """Add the built-in definitions of every type the bag's own schemas did not define."""
    default = default_typestore()
    store.register({k: v for k, v in default.fielddefs.items() if k not in store.fielddefs})


def register_schema(store: Typestore, schema: Any) -> None:
    """Register one MCAP schema (``ros2msg`` or ``ros2idl``) in ``store``; a definition that does
    not parse is left out, so the built-in one (if any) is used instead."""
    text = schema.data.decode("utf-8", errors="replace")
    try:
        if schema.encoding == "ros2msg":
            store.register(get_types_from_msg(text, schema.name))
        elif schema.encoding == "ros2idl":
            store.register(get_types_from_idl(text))
    except Exception:  # noqa: BLE001 - fall back to the built-in definition, if any
        pass


def deserialize_cdr(store: Typestore, data: bytes | memoryview, msgtype: str) -> Any:
    """CDR bytes -> a rosbags message, accepting the trailing bytes serializers may leave.

    rosbags refuses more than 3 bytes after a message. rclpy's ``serialize_message`` (Fast DDS)
    sizes its buffer by an estimate that reserves 8-byte alignment for every empty sequence, so
    a JointState with empty ``effort`` carries 4-8 trailing bytes, a JointTrajectory with empty
    points up to 32, and bags from other recorders may do the same. Accepted: up to 7 bytes plus 4
    per empty sequence in the message. A truncated message still fails (decoding runs out of
    bytes), as does one far longer than its type (another type's data).
    """
    try:
        return store.deserialize_cdr(data, msgtype)
    except SerdeError as exc:
        if "size mismatch" not in str(exc):
            raise
    raw = memoryview(data)
    msgdef = store.get_msgdef(msgtype)
    decode = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    message, pos = decode(raw[4:], 0, msgdef.cls, store)
    extra, allowed = len(raw) - 4 - pos, 7 + 4 * _empty_sequences(message)
    if extra > allowed:
        raise SerdeError(f"CDR message size mismatch for {msgtype!r}: {extra} bytes after the "
                         f"message, more than the {allowed} of alignment padding a serializer "
                         f"may leave (another type's data?)")
    return message


def _empty_sequences(value: Any) -> int:
    """Empty sequences (arrays or lists) in a decoded message, nested messages included."""
    if isinstance(value, np.ndarray):
        return int(value.size == 0)
    if isinstance(value, list):
        return 1 if not value else sum(_empty_sequences(v) for v in value)
    fields = getattr(value, "__dataclass_fields__", None)
    return sum(_empty_sequences(getattr(value, f)) for f in fields) if fields else 0
