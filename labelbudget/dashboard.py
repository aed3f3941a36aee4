"""`labelbudget dashboard`: a saved W&B workspace (view) for one experiment, built with W&B's own library for it
(`wandb-workspaces`, the `dashboard` extra), so nobody assembles the comparison panel by panel.

Sections: the report run's charts (weighted WER/CER against labeled hours with the fitted curves, per test set);
every finetune run's test CER against its labeled hours (log x) per test set, runs grouped by upstream; the
pretraining curves (loss, masked accuracy, the phone probe and its gain over the never-trained encoder). Runs are
filtered to the experiment's W&B group. Online it saves the view; otherwise it writes the view it would save
(W&B's JSON spec) to a file and says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelbudget.errors import LabelbudgetError
from labelbudget.io import write_text

if TYPE_CHECKING:
    from labelbudget.schema import Params


class DashboardError(LabelbudgetError, RuntimeError):
    """The dashboard cannot be built (the optional library is missing, or W&B refused it)."""


def test_set_names(params: Params) -> list[str]:
    corpus = params.corpus
    return list(corpus.synth.test_sets) if corpus.source == "synth" else list(corpus.ingest.tests)


def sections(params: Params) -> list[Any]:
    """The workspace's sections and panels, in the order a reader looks at them."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    tests = test_set_names(params)

    def line_series(table: str, title: str) -> Any:
        chart = wr.CustomChart.from_table(table, chart_fields={"step": "step", "lineKey": "lineKey",
                                                               "lineVal": "lineVal"},
                                          chart_strings={"title": title, "xname": "log10 labeled hours"})
        chart.chart_name = "wandb/lineseries/v0"
        return chart

    report = [line_series(f"charts/weighted_{m}_table", f"Weighted {m.upper()} vs labeled hours")
              for m in ("wer", "cer")]
    report += [line_series(f"charts/cer_{t}_table", f"CER on {t}") for t in tests]
    report.append(wr.MediaBrowser(title="Report figures (fitted curves and bands)", num_columns=2,
                                  media_keys=["figures/sample_efficiency_wer", "figures/sample_efficiency_cer"]))
    finetunes = [wr.ScatterPlot(title=f"CER on {t} vs labeled hours (finetune runs)", x=wr.Config("budget_hours"),
                                y=wr.SummaryMetric(f"test/{t}/cer"), log_x=True) for t in tests]
    finetunes.append(wr.LinePlot(title="Dev CER during finetuning", x="Step", y=["dev/cer"]))
    pretraining = [wr.LinePlot(title=title, x="Step", y=[key]) for key, title in (
        ("train/loss", "Pretraining loss"), ("train/masked_acc", "Masked-prediction accuracy"),
        ("probe/phone_acc", "Phone probe (held-out, best layer)"),
        ("probe/gain_over_random", "Probe gain over the never-trained encoder"))]
    return [ws.Section(name="Sample efficiency (report run)", panels=report, is_open=True),
            ws.Section(name="Finetunes by upstream", panels=finetunes, is_open=True),
            ws.Section(name="Pretraining", panels=pretraining, is_open=True)]


def workspace(params: Params, entity: str, name: str | None = None) -> Any:
    import wandb_workspaces.workspaces as ws

    w = params.wandb
    return ws.Workspace(
        entity=entity, project=w.project, name=name or f"labelbudget: {w.group}", sections=sections(params),
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == w.group],
                                          groupby=[ws.Config("upstream")]))


def spec(view: Any) -> str:
    """W&B's own JSON of the view (what `save` would upload)."""
    return view._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=1)


def build(params: Params, out: Path, entity: str | None = None, name: str | None = None) -> str:
    """Save the view when W&B is online (and an entity is known); else write its spec to `out`. Returns what
    happened, in one line."""
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        raise DashboardError("the dashboard needs W&B's workspace library: pip install 'labelbudget[dashboard]' "
                             "(wandb-workspaces)") from None
    mode = os.environ.get("WANDB_MODE") or params.wandb.mode
    if mode == "online":
        import wandb

        entity = entity or os.environ.get("WANDB_ENTITY") or wandb.Api().default_entity
        view = workspace(params, entity, name)
        try:
            view.save()
        except Exception as e:  # W&B's API: no key, no such project...
            raise DashboardError(f"W&B refused the workspace: {' '.join(str(e).split())[:300]}") from None
        return f"saved W&B workspace {view.url}"
    view = workspace(params, entity or os.environ.get("WANDB_ENTITY") or "<your-entity>", name)
    write_text(out, spec(view) + "\n")
    return (f"W&B is {mode}: wrote the workspace definition to {out} (set wandb.mode=online, or WANDB_MODE=online, "
            "and run again to save it)")
