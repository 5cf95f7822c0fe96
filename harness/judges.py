"""Judges (registry kind ``judges``): filled in by the evaluation work (issue: X-AlpacaEval scoring)."""
