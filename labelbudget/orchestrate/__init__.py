"""Orchestration: Prefect flows that drive the DVC pipeline of dvc.yaml.

- `dag`: the DAG and which stages need running, read from DVC's own index;
- `scheduler`: one Prefect task per stage (`dvc repro -s`), each started as soon as its inputs are ready;
- `remote`: a DVC remote to pull from and push to;
- `publish`: timings.csv and the Prefect artifacts of a run;
- `flows`: the `experiment` and `sweep` flows (flows/pipeline.py exposes them to prefect.yaml).
"""
