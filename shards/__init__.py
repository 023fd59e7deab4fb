"""shards stage of vidcorpus."""
