"""Retraining: labelled data sources, the feature cache, the Ray Train loop, MLflow tracking and promotion."""
