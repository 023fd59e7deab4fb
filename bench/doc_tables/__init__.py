"""The registry of docs/benchmarks.md's generated tables: name -> Table (bench/render_benchmarks.py).

One module per part of the doc; each exports ``TABLES``, a list of ``Table``. A new section: its
JSON in bench/results/, a ``Table`` in the module of its part (or a new module listed here), and
``<!-- table: NAME -->`` / ``<!-- /table -->`` around the place in the doc.
"""

from __future__ import annotations

from doc_tables import (captioning, captioning_final, catalog, decode_threads, filters, gpu_node_run9, gpu_node_run10,
                        gpu_node_run11, gpu_node_run12,
                        gpu_node_runs, ingest, nvdec, pipeline, report, serve, shards, shot_child, shot_speed, shots,
                        train,
                        train_compile, video2dataset)
from doc_tables.spec import Table

TABLES: dict[str, Table] = {}
for _module in (ingest, shots, shot_speed, shot_child, filters, captioning, captioning_final, catalog, shards, pipeline, video2dataset,
                serve, report, train, train_compile, gpu_node_runs, gpu_node_run9, gpu_node_run10, gpu_node_run11,
                gpu_node_run12, decode_threads, nvdec):
    for _table in _module.TABLES:
        if _table.name in TABLES:
            raise ValueError(f"table name {_table.name!r} registered twice")
        TABLES[_table.name] = _table
