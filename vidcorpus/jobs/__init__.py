"""The jobs behind the CLI's commands, one module (or small package) per job: ``curate/`` (run,
ingest, sync), ``release.py``, ``encode.py`` (the latent cache), ``train.py`` (base and refiner),
``generate.py``, ``report/``, ``demo.py``; ``pack_shards.py`` and ``shard_selection.py`` serve several.

The application layer: a job drives the stage folders and records what it did in the catalog; the
stage folders never import a job (docs/architecture.md). Jobs log through ``logging``; the CLI
prints their lines.
"""
