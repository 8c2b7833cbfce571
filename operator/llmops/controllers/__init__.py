"""One folder per kind; each gives the runtime a KindController (see docs/adding-a-kind.md)."""

from __future__ import annotations

from ..runtime.controller import KindController
from . import compression, finetune, inference

CONTROLLERS: list[KindController] = [finetune.CONTROLLER, compression.CONTROLLER, inference.CONTROLLER]
