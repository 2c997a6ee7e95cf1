"""Supervised fine-tuning and evaluation (filled by the fine-tuning issue)."""
