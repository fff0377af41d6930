"""A ticker's files in the store: the folder layout, the stored schema, and the manifest (first
and last date, rows, digest) that lives in the Parquet footer's key-value metadata."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.ingest import PRICE_SCHEMA

STORE_SCHEMA = pa.schema([f for f in PRICE_SCHEMA if f.name != "ticker"])
MANIFEST_KEY = b"lstm_pipeline.manifest"
DATA_FILE = "data.parquet"
LEGACY_MANIFEST_FILE = "manifest.json"  # written by earlier versions; removed on sight
LOCK_FILE = ".lock"
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class Manifest:
    ticker: str
    first_date: dt.date
    last_date: dt.date
    rows: int
    digest: str  # sha256 of the canonical stored rows, see table_digest

    def to_json(self) -> str:
        d = asdict(self)
        d["first_date"] = self.first_date.isoformat()
        d["last_date"] = self.last_date.isoformat()
        return json.dumps({"format": 1, **d}, ensure_ascii=False, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        d = json.loads(text)
        return cls(
            ticker=d["ticker"],
            first_date=dt.date.fromisoformat(d["first_date"]),
            last_date=dt.date.fromisoformat(d["last_date"]),
            rows=int(d["rows"]),
            digest=d["digest"],
        )


def table_digest(table: pa.Table) -> str:
    """SHA-256 of a stored table's canonical form (independent of Parquet encoding details)."""
    table = table.select(STORE_SCHEMA.names).cast(STORE_SCHEMA)
    h = hashlib.sha256(b"lstm_pipeline.prices.v1\n")
    h.update(str(table.num_rows).encode() + b"\n")
    for name in STORE_SCHEMA.names:
        arr = table.column(name).combine_chunks()
        h.update(name.encode() + b"\n")
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        h.update(np.packbits(valid).tobytes())
        if name == "date":
            vals = arr.cast(pa.int32()).fill_null(0).to_numpy()
        else:
            vals = arr.fill_null(0.0).to_numpy()
        h.update(np.ascontiguousarray(vals).astype(vals.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def to_date(days: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(days))
