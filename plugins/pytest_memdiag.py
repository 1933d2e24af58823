"""pytest plugin: ``pytest --gpu-leak-check`` (being written)."""

from __future__ import annotations
