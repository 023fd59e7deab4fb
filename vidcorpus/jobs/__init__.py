"""The jobs behind the CLI's commands, one module (or small package) per job: curate (run, ingest,
sync), release, encode (the latent cache), train, generate, report, demo.

The application layer: a job drives the stage folders and records what it did in the catalog; the
stage folders never import a job (docs/architecture.md, "Layers")."""
