"""What the service answers, as types: ``Experiment``, ``Update``, ``Aggregate``, ``Artifact``, …

``requests`` has one ``Response`` type; this package has one per resource. Each result is a
read-only mapping of exactly the fields the API sent (so ``result["id"]``, ``dict(result)``,
``.get``, iteration and ``result == {...}`` behave as the plain dicts earlier versions returned,
and scripts written for those keep working), and also has a typed attribute per field the API
documents (``experiment.id``, ``aggregate.round_number``, ``update.num_examples``). Values are
the API's JSON values unchanged: timestamps are ISO 8601 strings, nested objects plain dicts and
lists, so ``dict(result)`` is what the server sent and the ``fma`` CLI prints it as before.

Each class names the OpenAPI component (``/api/schema/``) it mirrors in ``schema``; a test holds
the declared fields equal to the schema's, so the types cannot drift from the API.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar, overload

T = TypeVar("T")


class Field(Generic[T]):
    """A typed, read-only attribute reading one field of a ``Result``."""

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, result: None, owner: type | None = None) -> Field[T]: ...

    @overload
    def __get__(self, result: Result, owner: type | None = None) -> T: ...

    def __get__(self, result: Result | None, owner: type | None = None) -> Field[T] | T:
        if result is None:
            return self
        try:
            return result[self.name]
        except KeyError:
            raise AttributeError(
                f"the service sent this {type(result).__name__} without {self.name!r} "
                "(an older server?); its fields are " + ", ".join(result)
            ) from None


class Result(Mapping[str, Any]):
    """A read-only mapping of one resource's fields, with typed attributes declared by subclasses."""

    __slots__ = ("_fields",)
    schema: ClassVar[str]  # the OpenAPI component this type mirrors

    def __init__(self, fields: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_fields", dict(fields))

    @classmethod
    def declared(cls) -> list[str]:
        """The fields this type has attributes for, in declaration order (base classes first)."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names += [n for n, v in vars(klass).items() if isinstance(v, Field) and n not in names]
        return names

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only; copy it with dict(...) to change it")

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return type(self), (dict(self._fields),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields!r})"


class Experiment(Result):
    """An experiment (the API's *federated model*, ``/api/v1/models/``)."""

    schema = "Experiment"
    id = Field[int]()
    name = Field[str]()
    developer = Field[int]()
    aggregator = Field[str]()
    aggregator_params = Field[Any]()
    requirement = Field[str]()
    requirement_args = Field[Any]()
    round_policy = Field[Any]()
    furthest_base_agg = Field[int | None]()
    allow_aggregation = Field[bool]()
    tensor_spec = Field[list[dict[str, Any]] | None]()
    update_schema = Field[Any]()
    metrics_schema = Field[Any]()
    client_agg_results_schema = Field[Any]()
    open_enrollment = Field[bool]()
    legacy_mode = Field[bool]()
    max_update_bytes = Field[int | None]()
    update_kind = Field[str]()
    update_norm = Field[dict[str, Any] | None]()
    privacy = Field[dict[str, Any] | None]()
    privacy_spent = Field[dict[str, Any] | None]()
    client_sampling = Field[dict[str, Any] | None]()
    finish_when = Field[dict[str, Any] | None]()
    state = Field[str]()
    state_reason = Field[str]()
    state_changed_at = Field[str | None]()
    asynchronous = Field[dict[str, Any] | None]()
    secure_aggregation = Field[dict[str, Any] | None]()
    evaluation = Field[dict[str, Any] | None]()
    current_artifact = Field[int | None]()
    clients = Field[list[str]]()
    created_on = Field[str]()
    last_modified = Field[str]()


class Update(Result):
    """One client's accepted update: what ``Client.push`` returns."""

    schema = "ModelUpdate"
    id = Field[int]()
    client = Field[str]()
    federated_model = Field[int]()
    data = Field[str]()
    status = Field[str]()
    status_reason = Field[str]()
    created_on = Field[str]()
    base_aggregate = Field[int | None]()
    base_round = Field[int]()
    applied_aggregate = Field[int | None]()
    aggregate_weight = Field[float | None]()
    num_examples = Field[int]()
    metrics = Field[dict[str, float] | None]()
    idempotency_key = Field[str | None]()
    content_id = Field[str]()
    size_bytes = Field[int]()
    weights_removed_on = Field[str | None]()


class Aggregate(Result):
    """One version of the global model, produced by one round."""

    schema = "ModelAggregate"
    id = Field[int]()
    federated_model = Field[int]()
    result = Field[str]()
    validation_score = Field[float | None]()
    created_on = Field[str]()
    parent = Field[int | None]()
    round_number = Field[int]()
    aggregator = Field[str]()
    aggregator_params = Field[Any]()
    content_id = Field[str]()
    size_bytes = Field[int]()
    duration_seconds = Field[float]()
    update_kind = Field[str]()
    state_content_id = Field[str | None]()


class AggregateDetail(Aggregate):
    """An aggregate with the updates that went into it and its evaluations combined (``Developer.aggregate``)."""

    schema = "ModelAggregateDetail"
    updates = Field[list[dict[str, Any]]]()
    report = Field[dict[str, Any]]()  # what the round decided beyond its weights, by section
    evaluation = Field["EvaluationSummary"]()

    def __init__(self, fields: Mapping[str, Any]) -> None:
        typed = dict(fields)
        if isinstance(typed.get("evaluation"), Mapping):
            typed["evaluation"] = EvaluationSummary(typed["evaluation"])
        super().__init__(typed)


class Artifact(Result):
    """A published, versioned aggregate (or the experiment's initial model, version 1.0.0)."""

    schema = "ModelArtifact"
    id = Field[int]()
    values = Field[str]()
    version = Field[str]()
    created_on = Field[str]()
    federated_model = Field[int]()
    aggregate = Field[int | None]()
    content_id = Field[str]()
    size_bytes = Field[int]()
    update_kind = Field[str]()


class Score(Result):
    """A client's evaluation of an aggregate (``Client.report_scores``)."""

    schema = "ClientAggregateScore"
    id = Field[int]()
    client = Field[str]()
    validation_results = Field[Any]()
    created_on = Field[str]()
    aggregate = Field[int]()


class Evaluation(Result):
    """An aggregate measured on held-out data, by a client or the developer (``report_evaluation``)."""

    schema = "Evaluation"
    id = Field[int]()
    federated_model = Field[int]()
    aggregate = Field[int]()
    round_number = Field[int]()
    source = Field[str]()  # "client" or "developer"
    client = Field[str | None]()
    metrics = Field[dict[str, float]]()
    num_examples = Field[int]()
    created_on = Field[str]()


class EnrollmentToken(Result):
    """An enrollment token's record: uses, limits, whether it still enrolls (never the secret)."""

    schema = "EnrollmentToken"
    id = Field[int]()
    created_on = Field[str]()
    created_by = Field[str]()
    expires_at = Field[str | None]()
    max_uses = Field[int | None]()
    uses = Field[int]()
    revoked_at = Field[str | None]()
    active = Field[bool]()


class IssuedEnrollmentToken(EnrollmentToken):
    """A new enrollment token, with its secret ``token`` (shown only in this answer)."""

    schema = "IssuedEnrollmentToken"
    token = Field[str]()


class ApiToken(Result):
    """One of a developer's API tokens; ``current`` marks the one this session uses."""

    schema = "DeveloperToken"
    id = Field[int]()
    name = Field[str]()
    created_at = Field[str]()
    expires_at = Field[str]()
    last_used_at = Field[str | None]()
    current = Field[bool]()


class MetricSummary(Result):
    """One metric over a round's clients, combined by the server."""

    schema = "MetricSummary"
    count = Field[int]()
    examples = Field[int]()
    mean = Field[float]()
    weighted_mean = Field[float]()
    min = Field[float]()
    max = Field[float]()


class EvaluationSummary(Result):
    """An aggregate's evaluations combined by the server: per metric, ``weighted_mean`` (by examples)
    is the combined figure; ``reports``, ``examples`` and ``sources`` say what it is made of."""

    schema = "EvaluationSummary"
    reports = Field[int]()
    examples = Field[int]()
    sources = Field[dict[str, int]]()
    metrics = Field[dict[str, MetricSummary]]()
    goals = Field[dict[str, str]]()

    def __init__(self, fields: Mapping[str, Any]) -> None:
        typed = dict(fields)
        if isinstance(typed.get("metrics"), Mapping):
            typed["metrics"] = {name: MetricSummary(s) for name, s in typed["metrics"].items()}
        super().__init__(typed)


class RoundMetrics(Result):
    """An aggregate's metrics: ``training`` (pushed with its updates), ``evaluation`` (its evaluations)."""

    schema = "AggregateMetrics"
    aggregate = Field[int]()
    round_number = Field[int]()
    created_on = Field[str]()
    training = Field[dict[str, MetricSummary]]()
    evaluation = Field[dict[str, MetricSummary]]()

    def __init__(self, fields: Mapping[str, Any]) -> None:
        typed = dict(fields)
        for source in ("training", "evaluation"):
            if isinstance(typed.get(source), Mapping):
                typed[source] = {name: MetricSummary(s) for name, s in typed[source].items()}
        super().__init__(typed)


R = TypeVar("R", bound=Result)


def many(kind: type[R], items: Any) -> list[R]:
    """A list of the API's objects as results of one type."""
    return [kind(item) for item in items]


def evaluation_body(aggregate: int, metrics: Mapping[str, Any], num_examples: int) -> dict[str, Any]:
    """The body of ``POST models/{id}/evaluations/``; numpy numbers become JSON numbers, and a count
    that is not a whole number is refused here rather than rounded."""
    if isinstance(num_examples, bool) or not hasattr(num_examples, "__index__"):
        raise TypeError(f"num_examples must be a whole number, not {num_examples!r}")
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f'metrics must be a mapping of names to numbers, e.g. {{"accuracy": 0.9}}, not {metrics!r}'
        )
    return {
        "aggregate": int(aggregate),
        "metrics": {
            str(name): value.item() if hasattr(value, "item") else value for name, value in metrics.items()
        },
        "num_examples": int(num_examples),
    }


def plain(value: Any) -> Any:
    """``json.dumps``'s ``default``: a result as the dict the API sent."""
    if isinstance(value, Result):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
