"""Contrastive image–tabular pretraining (filled by the pretraining issue)."""
