"""Message types of a bag: a ``rosbags`` typestore built from the bag's own definitions.

A bag carries the definition of every message type it holds (MCAP schemas), which match its data
even when the type has changed since; any type whose definition is missing (lost with the damaged
part of a bag) comes from the built-in ROS 2 types and the package's own
(:mod:`qt_ros.episodes.interfaces`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
