"""Broker snapshots: the replay table, the run spec and the cached weights, written so a
killed broker can be restarted without losing what it held.

Format: one uncompressed .npz (numpy arrays only, loaded with allow_pickle=False) holding
each table field, the item ids, a table of frames' ring, links and each item's oldest frame
id, the cached weights (prefixed "w/") and a JSON document (as uint8 bytes) with the table
config, counters, spec and weights version. It is written to a temporary file and renamed into
place, and a SHA-256 of the file is written beside it the same way: a torn or corrupt snapshot
fails the check and is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qrl.brokers.tables import ItemSchema, ReplayTable, TableConfig, make_table

SNAPSHOT, DIGEST = "replay.npz", "replay.npz.sha256"


class SnapshotError(RuntimeError):
    pass


@dataclass
class Restored:
    table: ReplayTable
    spec: dict[str, Any] | None
    weights: dict[str, np.ndarray]
    weights_version: int
    accounting: dict[str, Any] = field(default_factory=dict)
    """The broker's counters when the snapshot was written (received, gaps, per-actor sequence
    numbers), so a restored broker counts what was lost after it as gaps."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(directory: str | Path, table: ReplayTable, spec: dict[str, Any] | None,
         weights: dict[str, np.ndarray] | None, weights_version: int,
         accounting: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # An on-policy queue's items are stale by the time a restarted broker could serve them:
    # its snapshot keeps the configuration, not the items.
    queue = not table.snapshot_keeps_items
    n = 0 if queue else table.size
    doc = {"table": table.cfg.as_meta(), "schema": table.item_schema.as_meta() if table.item_schema else None,
           "next_id": table.next_id, "size": n,
           "inserted": table.limiter.inserted, "sampled": table.limiter.sampled,
           "spec": spec, "weights_version": weights_version, "accounting": accounting or {}}
    arrays = {} if queue else {f"f/{name}": store for name, store in table.storage.items()}
    if table.ring is not None and not queue:  # each frame once: the ring, its links, each item's oldest frame
        ring_doc, ring_arrays = table.ring.state()
        doc.update(ring_doc, valid_from=table.valid_from)
        arrays.update(ring_arrays, item_frame0=table.item_frame0)
    if table.prioritized:
        doc["max_priority"] = table.max_priority
        arrays["priority_leaves"] = table.priority_leaves()
    arrays.update({"ids": table.ids, "doc": np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)})
    arrays.update({f"w/{k}": np.asarray(v) for k, v in (weights or {}).items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    _atomic_write(directory / SNAPSHOT, data)  # data first, then the digest that vouches for it
    _atomic_write(directory / DIGEST, hashlib.sha256(data).hexdigest().encode())
    return directory / SNAPSHOT


def load(directory: str | Path, seed: int = 0) -> Restored | None:
    """The latest snapshot; None if there is none;
    SnapshotError if it exists but is torn, corrupt or inconsistent."""
    directory = Path(directory)
    path, digest_path = directory / SNAPSHOT, directory / DIGEST
    if not path.exists():
        return None
    data = path.read_bytes()
    if not digest_path.exists() or digest_path.read_text().strip() != hashlib.sha256(data).hexdigest():
        raise SnapshotError(f"{path} does not match its checksum (torn or corrupt); not loaded")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        doc = json.loads(arrays.pop("doc").tobytes())
        schema = ItemSchema.from_meta(doc["schema"]) if doc.get("schema") else None
        table = make_table(TableConfig.from_meta(doc["table"]), seed=seed, schema=schema)
        fields = {k[2:]: v for k, v in arrays.items() if k.startswith("f/")}
        if fields:
            if schema is None:
                table.set_schema(ItemSchema.of({k: v[:1] for k, v in fields.items()}))
            for name, store in fields.items():
                table.storage[name][:] = store
        table.ids[:] = arrays["ids"]
        table.next_id, table.size = doc["next_id"], doc["size"]
        if "frame_ring" in arrays:
            if table.ring is None:
                raise ValueError("it holds frames its schema does not declare")
            table.ring.restore(doc, arrays)
            table.item_frame0[:], table.valid_from = arrays["item_frame0"], int(doc["valid_from"])
        table.restored()
        table.limiter.inserted, table.limiter.sampled = doc["inserted"], doc["sampled"]
        if table.prioritized:
            table.restore_priority_leaves(arrays["priority_leaves"], float(doc["max_priority"]))
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise SnapshotError(f"{path} is not a valid snapshot: {exc}") from None
    weights = {k[2:]: v for k, v in arrays.items() if k.startswith("w/")}
    return Restored(table, doc["spec"], weights, doc["weights_version"], doc.get("accounting") or {})
