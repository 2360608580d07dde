"""Ray's cluster key-value store (the GCS) in raypipe's namespace: the one place that
calls ``ray.experimental.internal_kv``."""

from __future__ import annotations

import json
from typing import Any

from raypipe._ray.actors import NAMESPACE


def _kv() -> Any:
    from ray.experimental import internal_kv

    return internal_kv


def get(key: bytes) -> bytes | None:
    return _kv()._internal_kv_get(key, namespace=NAMESPACE)


def put(key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
    """Store ``value``; returns whether the key existed already (with ``overwrite=False``
    an existing key is kept: a test-and-set)."""
    return bool(_kv()._internal_kv_put(key, value, overwrite=overwrite, namespace=NAMESPACE))


def delete(key: bytes) -> None:
    _kv()._internal_kv_del(key, namespace=NAMESPACE)


def keys(prefix: bytes) -> list[bytes]:
    return list(_kv()._internal_kv_list(prefix, namespace=NAMESPACE))


def get_json(key: bytes) -> Any | None:
    blob = get(key)
    return json.loads(blob) if blob else None


def put_json(key: bytes, value: Any | None) -> None:
    """Store ``value`` as JSON; ``None`` deletes the key."""
    if value is None:
        delete(key)
    else:
        put(key, json.dumps(value).encode())


def delete_prefix(prefix: bytes) -> None:
    """Delete every key that starts with ``prefix``."""
    _kv()._internal_kv_del(prefix, del_by_prefix=True, namespace=NAMESPACE)
