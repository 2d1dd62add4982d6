"""An entry point whose module registers nothing (its hook was never written)."""

from __future__ import annotations
