"""The training DAG's approval step: Airflow's own ApprovalOperator on the gate's decision.

It asks only when the run's `promotion` is `approve` and the gate granted the promotion (register
then left the version challenger, `approval.status = awaiting`); otherwise it skips at once. The
request shows the run's summary (test metrics with their intervals, the gate's reason) and where
the model card is; Approve or Reject in the UI's Required Actions (or the REST API's
`hitlDetails`), with a comment. No answer within `approval_timeout_hours` is a Reject. A Reject
does not skip `model.promote`, which records every answer on the version.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from mmsearch import paths
from mmsearch.io import read_json
from mmsearch.summary import SUMMARY, metrics_table

WHY = "Why you approve or reject it: recorded on the model version and in the run's summary."


def model_card_link(name: str, version: str) -> str:
    """Where a person reads the version's model card: the MLflow server's page for it, when there is one."""
    uri = paths.redact_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if uri.startswith(("http://", "https://")) and "@" not in uri:
        return f"{uri.rstrip('/')}/#/models/{name}/versions/{version}"
    registry = paths.redact_uri(paths.mlflow_tracking_uri())
    return f"the description of {name} version {version} in the MLflow registry ({registry})"


class PromotionApproval(ApprovalOperator):
    """Approve or Reject this run's version as champion (only when the run's `promotion` is
    `approve` and the gate granted it; otherwise skipped). No answer within
    `approval_timeout_hours` rejects it; `model.promote` records the answer on the version."""

    template_fields = (*ApprovalOperator.template_fields, "registry", "settings")

    def __init__(self, *, registry, settings, **kwargs):
        # the DAG's params arrive here too (marked as the DAG's, the request leaves them out)
        params = ParamsDict(kwargs.pop("params", None) or {})
        params.update(ParamsDict({"comment": Param("", type="string", title="Why", source="task", description=WHY)}))
        super().__init__(
            subject="Promote this run's model to champion?",  # named at run time, when the version is known
            defaults=ApprovalOperator.REJECT,  # what no answer within the timeout means
            params=params,
            **kwargs,
        )
        self.registry, self.settings = registry, settings

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        approval = self.registry.get("approval") or {}
        if approval.get("status") != "awaiting":
            raise AirflowSkipException(f"no approval needed: {self.registry['decision']['reason']}")
        name, version = self.registry["registered_model"], self.registry["version"]
        summary = read_json(Path(self.settings["run_dir"]) / SUMMARY)
        self.subject = f"Promote {name} v{version} to champion?"
        self.body = (
            f"The gate granted it: {self.registry['decision']['reason']}.\n\n"
            f"{metrics_table(summary)}\n\n"
            f"Model card: {model_card_link(name, version)}\n\n"
            f"Run {summary['run_id']}, outputs in {summary['run_dir']}\n\n"
            f"Approve moves the `champion` alias (the re-ranking service follows it); Reject, or no answer "
            f"within {approval['timeout_hours']:g} h, leaves v{version} challenger."
        )
        self.response_timeout = timedelta(hours=approval["timeout_hours"])
        return super().execute(context)

    def execute_complete(self, context, event):
        # ApprovalOperator skips its downstream on Reject; model.promote must run to record it
        answer = HITLOperator.execute_complete(self, context, event)
        return {**answer, "timedout": bool(event.get("timedout"))}
