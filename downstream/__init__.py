"""Evaluation: the paper's six tasks, probes (linear, finetune, logreg), the feature cache and metrics."""
