"""Contrastive image–tabular pretraining."""
