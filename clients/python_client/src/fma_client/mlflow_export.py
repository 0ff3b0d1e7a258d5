"""Export an experiment's rounds to an MLflow tracking server: what ``fma export --mlflow`` runs.

One MLflow run per FMA experiment (found again by its ``fma.experiment`` and ``fma.service`` tags),
with one step per round: the clients' metrics as the server combined them (the mean weighted by
examples: ``training.<name>``, what clients pushed with the round's updates, and
``evaluation.<name>``, the aggregate's evaluations on held-out data by clients and the developer's
evaluator), and a ``fma.round.<n>`` tag naming the round's aggregate, its SHA-256, its algorithm and
parameters and the version it was published as. The run's parameters are the strategy's when the
run was made. The tags ``fma.last_round`` and ``fma.last_evaluation`` make an export idempotent:
exporting again sends only the rounds after the one, and the combined evaluation again of each round
already sent that was evaluated after the other (evaluations come after their round, often after the
next round has been exported), so a stopped ``--follow`` or a cron job loses nothing.

MLflow is the ``mlflow`` extra (``pip install "fma-client[mlflow]"``, mlflow-skinny), imported only
here and only when exporting, so that fma-client's own install stays small.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from fma_client.developer import Developer
from fma_client.errors import FmaClientError

EXTRA = 'pip install "fma-client[mlflow]"'
SOURCES = ("training", "evaluation")
LAST_ROUND = "fma.last_round"
LAST_EVALUATION = "fma.last_evaluation"
# MLflow's rule for metric and parameter names; anything else in a client's metric name becomes _.
NOT_IN_A_KEY = re.compile(r"[^\w\-. /]")


def _mlflow() -> Any:
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise FmaClientError(f"exporting to MLflow needs fma-client's mlflow extra: {EXTRA}") from None
    return MlflowClient, Metric, Param, RunTag


def round_metrics(item: Mapping[str, Any], *, sources: tuple[str, ...] = SOURCES) -> dict[str, float]:
    """One round's combined metrics as MLflow keys: ``<source>.<metric>`` → the weighted mean."""
    return {
        f"{source}.{NOT_IN_A_KEY.sub('_', name)}": float(summary["weighted_mean"])
        for source in sources
        for name, summary in item[source].items()
        if summary.get("weighted_mean") is not None
    }


def strategy_params(experiment: Mapping[str, Any]) -> dict[str, str]:
    """The experiment's strategy as MLflow parameters (strings; nested values as JSON)."""
    params = {"aggregator": experiment["aggregator"], "update_kind": experiment["update_kind"]}
    for name, value in (experiment.get("aggregator_params") or {}).items():
        params[f"aggregator_params.{NOT_IN_A_KEY.sub('_', name)}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    for name in ("round_policy", "requirement", "requirement_args"):
        if experiment.get(name) not in (None, "", []):
            params[name] = json.dumps(experiment[name])
    return params


class MlflowExport:
    """Keeps one MLflow run in step with one FMA experiment's rounds."""

    def __init__(
        self,
        dev: Developer,
        experiment: int,
        *,
        tracking_uri: str,
        mlflow_experiment: str | None = None,
    ) -> None:
        self.MlflowClient, self.Metric, self.Param, self.RunTag = _mlflow()
        self.dev = dev
        self.experiment = dev.experiment(experiment)
        self.client = self.MlflowClient(tracking_uri=tracking_uri)
        self.mlflow_experiment = mlflow_experiment or f"fma/{self.experiment['name']}"
        self.run_id = self._run()

    def _tags(self) -> dict[str, str]:
        return {"fma.experiment": str(self.experiment["id"]), "fma.service": self.dev.url}

    def _run(self) -> str:
        """The run of this FMA experiment, made (with the strategy's parameters) the first time."""
        found = self.client.get_experiment_by_name(self.mlflow_experiment)
        experiment_id = (
            found.experiment_id if found else self.client.create_experiment(self.mlflow_experiment)
        )
        tags = self._tags()
        wanted = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([experiment_id], filter_string=wanted, max_results=1)
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(experiment_id, run_name=self.experiment["name"], tags=tags)
        params = [self.Param(k, v) for k, v in strategy_params(self.experiment).items()]
        self.client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def sync(self) -> list[int]:
        """Send the rounds MLflow does not have yet, and the evaluations of sent rounds reported since;
        returns the new rounds' numbers."""
        run = self.client.get_run(self.run_id)
        last = int(run.data.tags.get(LAST_ROUND, 0))
        seen = int(run.data.tags.get(LAST_EVALUATION, 0))
        # before the metrics: every evaluation listed here is in them (a later one is listed next time)
        late = self.dev.evaluations(self.experiment["id"], after=seen)
        items = self.dev.metrics(self.experiment["id"])
        fresh = [i for i in items if i["round_number"] > last]
        aggregates = {a["id"]: a for a in self.dev.aggregates(self.experiment["id"])} if fresh else {}
        versions = (
            {a["aggregate"]: a["version"] for a in self.dev.artifacts(self.experiment["id"])} if fresh else {}
        )
        marked = {LAST_EVALUATION: str(max(e["id"] for e in late))} if late else {}
        reevaluated = {e["round_number"] for e in late if e["round_number"] <= last}
        sent = [i for i in items if i["round_number"] in reevaluated]
        for item in sent:
            tags = marked if item is sent[-1] and not fresh else {}
            self._log(item["round_number"], round_metrics(item, sources=("evaluation",)), tags)
        if marked and not sent and not fresh:
            self._log(last, {}, marked)
        for item in fresh:
            aggregate = aggregates[item["aggregate"]]
            record = {
                "aggregate": aggregate["id"],
                "sha256": aggregate["content_id"],
                "aggregator": aggregate["aggregator"],
                "aggregator_params": aggregate["aggregator_params"],
                "version": versions.get(aggregate["id"]),
            }
            number = item["round_number"]
            tags = {f"fma.round.{number}": json.dumps(record), LAST_ROUND: str(number)}
            self._log(number, round_metrics(item), tags | (marked if item is fresh[-1] else {}))
        return [i["round_number"] for i in fresh]

    def _log(self, step: int, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """One request per round: its metrics and tags (``fma.last_round`` with them) land together."""
        if not metrics and not tags:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[self.Metric(k, v, now, step) for k, v in metrics.items()],
            tags=[self.RunTag(k, v) for k, v in tags.items()],
        )

    def follow(self, *, poll_interval: float = 5.0, count: int | None = None) -> Iterator[list[int]]:
        """Sync now, then again as each round lands (``Developer.watch``); yields what each sync sent."""
        experiment = self.experiment["id"]
        newest = max(
            (a["id"] for a in self.dev.aggregates(experiment)), default=0
        )  # before the sync: none missed
        yield self.sync()
        rounds = self.dev.watch(experiment, poll_interval=poll_interval, after=newest)
        for seen, _ in enumerate(rounds, start=1):
            yield self.sync()
            if count and seen >= count:
                return

    def finish(self) -> None:
        """Mark the run finished (a later export or ``--follow`` goes on appending to it)."""
        with contextlib.redirect_stdout(
            sys.stderr
        ):  # MLflow prints the run's links: keep --json's stdout clean
            self.client.set_terminated(self.run_id)
