"""catalog stage of vidcorpus."""
