"""The aggregator's AWS Lambda entry point: ``fma_aggregator.lambda_handler.handler``.

One function serves every event the deployment sends it:

- an EventBridge scheduled event (``"source": "aws.events"``, ``"detail-type": "Scheduled Event"``)
  sweeps: each experiment with pending updates and no live lease gets an asynchronous "round
  ready" invocation of this function, each upload left ``checking`` a "check_upload" one, and
  stale upload sessions, old update bytes and old bytes no record references are cleaned up
  (``fma_django.housekeeping``). The
  original FMA's per-model rules, whose ``detail`` holds a ``model_id``, run that experiment's
  round directly;
- ``{"fma": "round_ready", "experiment_id": "3"}``, sent asynchronously by the API when an update
  is accepted, runs the round; a model above ``FMA_SHARD_BYTES`` is fanned out instead as one
  asynchronous ``{"fma": "shard", ...}`` invocation per shard;
- ``{"fma": "shard", "plan": {...}, "index": i}`` aggregates one shard; the last shard to finish
  writes the aggregate and commits the round once;
- ``{"fma": "check_upload", "upload_id": "<uuid>"}``, sent asynchronously by the API when an
  upload too large to check within its request is completed, and by the sweep for every upload
  still ``checking``, joins and checks it: its update is accepted (announcing the round) or refused;
- ``{"fma": "unmask_secure_round", "round_id": "7"}``, sent asynchronously by the API when a secure
  round's last share is in, and by the sweep for every secure round still ``summing``, sums its
  masked inputs and records its aggregate (``fma_django.secure_rounds.secure_round_unmask``);
- ``{"fma": "readiness"}``, sent by the deployment's schedule (``terraform_deploy/monitoring.tf``),
  runs the readiness checks of ``/readyz`` (database, migrations, weight store) from inside the
  VPC, where API Gateway itself never probes, and reports ``Ready`` (1 or 0) as a CloudWatch metric;
- ``{"manage": "migrate"}`` or ``{"manage": ["createsuperuser", "--noinput", ...]}`` runs a Django
  management command (``DJANGO_SUPERUSER_PASSWORD`` etc. come from the function's environment).

Returns a JSON-serializable dict saying what was done. A round that failed is also logged as
``round failed: ...``; the deployment's alarm counts the ``RoundsFailed`` metric that the round's
event gives in CloudWatch's embedded metric format (``fma_aggregator.emf``).
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from fma_aggregator.django_setup import setup_django

setup_django()  # at cold start, before the imports below reach Django models

from django.core.management import call_command  # noqa: E402
from django.db import close_old_connections  # noqa: E402

from fma_aggregator import emf  # noqa: E402
from fma_aggregator.checks import run_check, run_unmask  # noqa: E402
from fma_aggregator.config import AggregatorConfig  # noqa: E402
from fma_aggregator.engine import build_engine  # noqa: E402
from fma_aggregator.lambda_invoke import LambdaInvoker  # noqa: E402
from fma_aggregator.readiness import check_readiness  # noqa: E402
from fma_core.shards import RoundPlan  # noqa: E402
from fma_django.housekeeping import housekeeping_sweep  # noqa: E402
from fma_django.store import DjangoMetadataStore  # noqa: E402

logger = logging.getLogger(__name__)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result = _dispatch(event, context)
    if result.get("status") == "failed":
        logger.error("round failed: experiment %s: %s", result.get("experiment_id"), result.get("reason"))
    return result


def _dispatch(event: dict[str, Any], context: Any) -> dict[str, Any]:
    close_old_connections()  # a warm container may hold a connection the database has since dropped
    if "manage" in event:
        return _manage(event["manage"])
    if event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event":
        model_id = (event.get("detail") or {}).get("model_id")
        return _run_round(str(model_id), context) if model_id is not None else _sweep(context)
    kind = event.get("fma")
    if kind == "round_ready":
        return _run_round(str(event["experiment_id"]), context)
    if kind == "readiness":
        return _readiness()
    if kind == "check_upload":
        return run_check(str(event["upload_id"]))
    if kind == "unmask_secure_round":
        return run_unmask(str(event["round_id"]))
    if kind == "shard":
        plan = RoundPlan.from_dict(event["plan"])
        return build_engine().run_shard(plan, int(event["index"]), _invoker(context)).to_dict()
    raise ValueError(f"the aggregator does not know this event: keys {sorted(event)}")


def _invoker(context: Any) -> LambdaInvoker:
    config = AggregatorConfig.from_env()
    return LambdaInvoker(config.lambda_function or context.invoked_function_arn)


def _sweep(context: Any) -> dict[str, Any]:
    housekeeping = housekeeping_sweep(lease_seconds=AggregatorConfig.from_env().lease_seconds)
    due = DjangoMetadataStore().experiments_to_sweep(now=time.time())
    invoker = _invoker(context) if due else None
    for experiment_id in due:
        invoker.round_ready(experiment_id)
    return {"status": "swept", "round_ready": due, **housekeeping}


def _run_round(experiment_id: str, context: Any) -> dict[str, Any]:
    return build_engine().run_round(experiment_id, _invoker(context)).to_dict()


def _readiness() -> dict[str, Any]:
    result = check_readiness()
    emf.emit({"Ready": (1 if result.ready else 0, "Count")})
    return {"status": "ready" if result.ready else "not_ready", "checks": result.checks}


def _manage(command: str | list[str]) -> dict[str, Any]:
    args = [command] if isinstance(command, str) else list(command)
    if not args or not all(isinstance(a, str) for a in args):
        raise ValueError(
            '"manage" takes a command name or a list of strings: ["createsuperuser", "--noinput"]'
        )
    if args[0] == "migrate" and "--noinput" not in args:
        args.append("--noinput")
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    logger.info("manage %s done", args[0])
    return {"status": "ok", "command": args, "output": out.getvalue(), "errors": err.getvalue()}
