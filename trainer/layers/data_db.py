"""Caffe's Data layer: LMDB or LevelDB of Datums (raw or encoded), prefetched and transformed.

Records are read in database order from the first, wrapping at the end, as
Caffe does (``rand_skip`` skips a random number of records at the start). Batch
k holds records ``k*B .. k*B+B-1`` (mod the record count), so a resumed run
re-reads exactly the records the interrupted one would have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datakit.formats.datum import RawLayout, datum_to_array, parse_datum_fields
from datakit.db import BACKENDS, detect_backend
from datakit.db.sharded_backend import read_shards
from datakit.errors import DatabaseError

from trainer.layers import register
from trainer.layers.base_data import HostBatch, PrefetchingDataLayer
from datakit.threadpool import decode_pool
from datakit.db.shared import acquire_reader, release_reader

LABEL_SAMPLE = 5000

@register("Data")
class DataLayer(PrefetchingDataLayer):
    """LMDB / LevelDB Datums (``data_param``: source, batch_size, backend, rand_skip)."""

    def open_source(self) -> tuple[tuple[int, ...], int]:
        p = self.param.data_param
        self.batch_size = int(p.batch_size)
        if not p.source:
            raise self.error("data_param.source is empty; give the database folder")
        self.source = Path(self.base_dir) / p.source
        by_enum = {b.caffe_enum: b.name for b in BACKENDS.values() if b.caffe_enum is not None}
        wanted = by_enum.get(p.backend, "lmdb") if p.HasField("backend") else None
        found = detect_backend(self.source)
        # A sharded database (``datakit convert --cluster``) is read as one; its shards' own
        # backend is what data_param.backend should name.
        stored = read_shards(self.source)["backend"] if found == "sharded" else found
        if wanted and stored != wanted:
            # Caffe would fail; the database on disk tells the truth, so follow it and say so.
            what = f"sharded {stored}" if found == "sharded" else found
            self.log_warning(f"layer {self.name}: data_param.backend is {wanted.upper()} but {self.source} "
                             f"is {what}; reading it as {what}")
        if BACKENDS[found].record_kind != "datum":
            raise self.error(f"{self.source} is a {found} database; use an {BACKENDS[found].layer} layer for it")
        self.reader = acquire_reader(self.source, found)
        self.backend = found
        n = len(self.reader)
        if n == 0:
            raise DatabaseError(f"{self.source}: the database is empty")
        tp = self.param.transform_param
        self.color = False if tp.force_gray else True if tp.force_color else None
        # Caffe: caffe_rng_rand() % rand_skip, so 0 .. rand_skip - 1 records (rand_skip itself never)
        self.skip = int(self.rng.integers(0, p.rand_skip)) if p.rand_skip else 0
        key, value = next(iter(self.reader.raw_items()))
        first = self._decode(key, value)
        self.first_encoded = parse_datum_fields(value).encoded
        # Raw records of one shape share all bytes but pixels and label: read them without a parse.
        self.layout = RawLayout.of(value)
        return first[0].shape, n

    def _where(self, key: bytes) -> str:
        return f"{self.source}: record {key.decode('utf-8', 'backslashreplace')!r}"

    def _decode(self, key: bytes, value: bytes) -> tuple[np.ndarray, int]:
        where = self._where(key)
        fields = parse_datum_fields(value, where)
        # Encoded records decode in colour unless force_gray (Caffe's DecodeDatumToCVMat default);
        # we keep the file's own channels when neither force flag is set, as DecodeDatumNative.
        color = self.color if fields.encoded else True
        return datum_to_array(fields, color=color, where=where), fields.label

    def source_label_sample(self) -> list[int]:
        labels = []
        for i, (_, value) in enumerate(self.reader.scan(buffers=True)):  # zero-copy where the backend can
            if i >= LABEL_SAMPLE:
                break
            labels.append(parse_datum_fields(value).label)
        return labels

    # -- reading in the prefetch thread -------------------------------------------------------
    def _cursor(self, start_record: int):
        """An endless iterator over (key, value), wrapping at the end, from record ``start_record``.

        On LMDB the values are zero-copy views, valid until the next item: read_batch copies
        the pixels straight into the batch array, one copy instead of two.
        """
        start_key = self.reader.seek(start_record % self.num_records)
        while True:
            yield from self.reader.scan(start_key, buffers=True)
            start_key = None

    def read_batch(self, k: int) -> HostBatch:
        start = self.skip + k * self.batch_size
        if getattr(self, "_next_start", None) != start:
            self._iter = self._cursor(start)
        n = self.batch_size
        shape = self.item_shape
        data = None
        labels = np.empty(n, dtype=np.int64)
        keys: list[str] = []
        pending: list[tuple[int, bytes, bytes]] = []   # encoded records, decoded in the pool
        layout: RawLayout | None = getattr(self, "layout", None)
        fast = layout if layout is not None and layout.shape == shape else None
        flat = memoryview(b"")   # the raw fast path copies pixels through a byte view of `data`
        if fast is not None:
            data = np.empty((n, *shape), dtype=np.uint8)
            flat = data.data.cast("B")
        for i in range(n):
            key, value = next(self._iter)
            keys.append(key.decode("utf-8", "backslashreplace"))
            if fast is not None:
                raw = fast.split(value)
                if raw is not None:
                    # a memcpy into the batch: three NumPy calls per record cost 3x the whole read
                    flat[i * fast.size:(i + 1) * fast.size] = raw[0]
                    labels[i] = raw[1]
                    continue
            fields = parse_datum_fields(value, self._where(key))
            labels[i] = fields.label
            if fields.encoded:
                pending.append((i, key, bytes(value)))
                continue
            img = datum_to_array(fields, where=self._where(key))
            if data is None:
                data = np.empty((n, *shape), dtype=img.dtype)
            self._check_shape(key, img.shape)
            data[i] = img
        self._next_start = start + n
        if pending:
            decoded = list(decode_pool().map(lambda item: self._decode(item[1], item[2]), pending))
            for (i, key, _), (img, _) in zip(pending, decoded):
                if data is None:
                    data = np.empty((n, *shape), dtype=img.dtype)
                self._check_shape(key, img.shape)
                data[i] = img
        assert data is not None  # batch_size > 0 (checked at setup), and every record sets it
        return HostBatch(data, labels, keys)

    def _check_shape(self, key: bytes, shape: tuple[int, ...]) -> None:
        if shape != self.item_shape:
            raise DatabaseError(f"{self._where(key)}: image is {'x'.join(map(str, shape))} but the first "
                                f"record is {'x'.join(map(str, self.item_shape))} (CxHxW); a Data layer "
                                f"needs one size: convert with --resize-height/--resize-width")

    def close(self) -> None:
        super().close()
        if getattr(self, "reader", None) is not None:
            self.reader = None
            assert self.source is not None  # the reader was acquired for it
            release_reader(self.source, self.backend)
