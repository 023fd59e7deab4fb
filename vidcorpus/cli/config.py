"""`vidcorpus config show`: the effective configuration."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import ConfigOpt, PresetOpt, SetOpt, effective_config
from vidcorpus.cli.output import console
from vidcorpus.config import dump_config

config_app = typer.Typer(rich_markup_mode=None, help="Inspect the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    resolved: bool = typer.Option(False, "--resolved", help="Also fill model paths from the preset (builds tiny models)."),
) -> None:
    """Print the effective configuration (defaults < --config file < --set overrides) as YAML."""
    cfg = effective_config(config, set_, **{"models.preset": preset})
    if resolved:
        from vidcorpus.jobs.models import resolve_models  # inside: keeps --help fast (the jobs)

        cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    console.print(dump_config(cfg), end="", highlight=False, markup=False, soft_wrap=True)  # valid YAML at any width
