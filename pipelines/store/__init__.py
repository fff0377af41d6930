"""The Parquet price store: a Hive-partitioned dataset, merged incrementally, atomically, locked.

Layout::

    <root>/ticker=<T>/data.parquet   # columns date, open, high, low, close, volume, amount
    <root>/ticker=<T>/.lock          # the lock for read-merge-write (while held)

Any Parquet reader opens ``<root>`` as a dataset with ``ticker`` as its partition column
(pandas, pyarrow.dataset with ``partitioning="hive"``, DuckDB, Dask, Polars): the files hold no
``ticker`` column of their own, and nothing else in the tree is visible to them (hidden names).
The manifest (first/last date, row count, SHA-256 of the canonical rows) lives in the Parquet
footer's key-value metadata, so data and manifest change together in one atomic replacement
(:func:`pipelines.fsio.atomic_write`). Readers need no lock: they see the old or the new file.
A ``manifest.json`` left by earlier versions (which broke dataset readers) is removed by the
next merge; :meth:`PriceStore.upgrade` removes them all at once.

:mod:`.files` the layout, schema and manifest; :mod:`.merge` combining new rows with stored
ones; :mod:`.price_store` the store (reading, locked merges, atomic writes).
"""

from pipelines.store.files import STORE_SCHEMA, Manifest, table_digest
from pipelines.store.merge import MergeReport, describe
from pipelines.store.price_store import PriceStore, UnknownTickerError, as_frame

__all__ = [
    "STORE_SCHEMA",
    "Manifest",
    "MergeReport",
    "PriceStore",
    "UnknownTickerError",
    "as_frame",
    "describe",
    "table_digest",
]
