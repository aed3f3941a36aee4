"""Prefect flows that drive the DVC pipeline declared in `dvc.yaml` (they never re-implement a stage)."""
