"""Evaluation of ADL results (paper §3-§6)."""
