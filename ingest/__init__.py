"""ingest stage of vidcorpus."""
