"""`python -m vidcorpus.cli ...` (e.g. `torchrun --nproc_per_node 8 -m vidcorpus.cli train ...`)."""

from vidcorpus.cli.app import main

main()
