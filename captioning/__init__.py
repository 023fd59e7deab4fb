"""captioning stage of vidcorpus."""
