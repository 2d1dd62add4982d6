"""ichbench: a bench for intracranial-hemorrhage classifiers on head CT."""

from __future__ import annotations

__version__ = "0.1.0"
