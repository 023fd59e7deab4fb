"""Curation: `vidcorpus run` / `ingest` (``pipeline.py``, the Ray Data stream; ``commit.py``, the
driver's commits; ``caption_pool.py``, the caption actors; ``redecide.py``, dedup and re-decision,
also `vidcorpus filter dedup`) and `vidcorpus sync` (``sync.py``, with ``extract_pending.py`` for
kept clips that have no file yet). Shards are packed by ``vidcorpus/jobs/pack_shards.py``."""
