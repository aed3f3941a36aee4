"""Prefect entry points of the experiment, as prefect.yaml names them (`flows/pipeline.py:experiment`).

The flows live in the package (labelbudget.orchestrate.flows) so that the installed `labelbudget` command
imports them; this file only exposes them where deployments look.
"""

from labelbudget.orchestrate.flows import experiment, sweep

__all__ = ["experiment", "sweep"]

if __name__ == "__main__":
    experiment()
