"""StrokeSSL: self-supervised multimodal learning on stroke cohorts (MRI + clinical records)."""

__version__ = "0.1.0"
