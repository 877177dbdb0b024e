"""What the command modules share: the config of a run, the console, masked text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import Config


def mask(text: str) -> str:
    from ..config import mask_url

    return mask_url(text)


def config_of(ctx: click.Context) -> Config:
    from ..config import Config

    obj = ctx.find_root().obj
    if "config" not in obj:
        obj["config"] = Config.load(
            obj.get("config_path"), overrides={"database_url": obj.get("url")}
        )
    config: Config = obj["config"]
    return config


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)
