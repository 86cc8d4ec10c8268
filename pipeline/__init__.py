"""Scaling-study pipeline: data, pretraining, transfer, tracking, orchestration, analysis."""
