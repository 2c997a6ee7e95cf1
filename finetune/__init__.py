"""Supervised fine-tuning and evaluation."""
