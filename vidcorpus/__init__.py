"""vidcorpus: curate text-video / text-image corpora and train video diffusion models on them.

The stage folders of the repository are mapped into this package (``vidcorpus.ingest``,
``vidcorpus.filters``, ``vidcorpus.captioning``, ``vidcorpus.shards``, ``vidcorpus.catalog``,
``vidcorpus.train``) by setuptools ``package-dir``.
"""

__version__ = "0.1.0"
