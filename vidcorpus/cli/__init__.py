"""The `vidcorpus` command line (typer + rich): one module per command or command group.

A command's code is in the module named for it: `vidcorpus release create` -> ``release.py``,
`vidcorpus train` and `train-refiner` -> ``train.py``, `export` and `export-refiner` -> ``export.py``;
``app.py`` assembles them, ``user_errors.py`` turns a user's mistake into one line and an exit code,
``options.py`` holds the shared options and the config loading, ``output.py`` the console and tables.
The work itself is done by the jobs (``vidcorpus/jobs/``), imported inside the commands so that
`vidcorpus --help` stays fast.
"""

import os

# Never let a missing weight turn into a minute of hub retries: offline unless the user says otherwise
# (HF_HUB_OFFLINE=0 lets production presets download). Set before any command module imports a model library.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-file bars of model loading; stages have their own
