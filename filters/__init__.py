"""filters stage of vidcorpus."""
