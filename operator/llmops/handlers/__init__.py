"""Importing this package registers every Kopf handler."""

from . import finetune  # noqa: F401
