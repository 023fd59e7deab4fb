"""train stage of vidcorpus: the I2VGen-XL base stage trained on clips streamed from WebDataset shards.

i2vgen_components.py builds the tiny component set and loads tiny or real weights through one path;
data.py decodes, frame-samples and buckets shard samples; objective.py is the v-prediction loss with
the pipeline's conditioning and CFG dropout; loop.py runs the steps (``train_base``). No Ray here.
"""
