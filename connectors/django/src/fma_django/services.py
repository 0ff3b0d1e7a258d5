"""The rules of FMA as plain functions over the models: experiments, clients and enrollment,
aggregates and artifacts (evaluations are in ``fma_django.evaluations``, an update's bytes in
``fma_django.ingestion``).

Each function takes keyword-only arguments, checks what it needs, changes the database in one
transaction and raises a ``fma_django.errors`` exception when the request cannot be honoured.
Weight bytes go to the configured WeightStore first and are removed again if the request fails
(``storage.removed_on_failure``), so a rejected request leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from fma_core.aggregators import Aggregator, create_aggregator
from fma_core.asynchronous import AsyncMode, check_aggregator, check_round_policy
from fma_core.errors import ConfigurationError, InvalidWeights
from fma_core.norms import NormPolicy
from fma_core.policies import policy_from_config
from fma_core.privacy import PrivacyPolicy
from fma_core.rounds import check_privacy
from fma_core.sampling import ClientSampling, check_for_privacy, sampling_from_config
from fma_core.secagg.config import SecureAggregation, conflicts
from fma_core.weights import TensorSpec, Weights, from_legacy_json, to_bytes, validate
from fma_django import credentials, evaluations, json_schemas, lifecycle
from fma_django.errors import (
    Conflict,
    DuplicateName,
    Forbidden,
    NotFound,
    ValidationFailed,
    WeightsInvalid,
)
from fma_django.limits import VERSION_PATTERN, VERSION_RULE
from fma_django.models import (
    Client,
    Enrollment,
    EnrollmentToken,
    Event,
    EventKind,
    Experiment,
    ExperimentState,
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    UpdateKind,
)
from fma_django.selectors import initial_artifact
from fma_django.storage import removed_on_failure, weight_store

INITIAL_VERSION = "1.0.0"
CONFIG_FIELDS = (
    "name",
    "aggregator",
    "aggregator_params",
    "requirement",
    "requirement_args",
    "round_policy",
    "tensor_spec",
    "update_schema",
    "metrics_schema",
    "client_agg_results_schema",
    "furthest_base_agg",
    "allow_aggregation",
    "open_enrollment",
    "legacy_mode",
    "max_update_bytes",
    "update_kind",
    "update_norm",
    "privacy",
    "client_sampling",
    "finish_when",
    "asynchronous",
    "secure_aggregation",
    "evaluation",
)


# what a settings change writes: every column but those other services move — the lifecycle's, the
# published artifact, the privacy key — so a rename that read the row before a pause, a publish or the
# first private round cannot undo it
SETTINGS_COLUMNS = [
    field.name
    for field in Experiment._meta.concrete_fields
    if not field.primary_key
    and field.name
    not in (
        "allow_aggregation",
        "state",
        "state_reason",
        "state_changed_at",
        "current_artifact",
        "privacy_secret",
        "created_on",
    )
]


def event_record(
    *,
    kind: EventKind,
    experiment: Experiment | None = None,
    client: Client | None = None,
    user: AbstractBaseUser | None = None,
    **detail: Any,
) -> Event:
    user = user if user is not None and user.is_authenticated and user.pk else None
    return Event.objects.create(kind=kind, experiment=experiment, client=client, user=user, detail=detail)


# Experiments


def effective_round_policy(experiment: Experiment) -> Any:
    """The policy configuration the round engine uses: ``round_policy``, else the original's pair."""
    if experiment.round_policy is not None:
        return experiment.round_policy
    if experiment.requirement:
        return {"requirement": experiment.requirement, "requirement_args": experiment.requirement_args or []}
    return None


def experiment_spec(experiment: Experiment) -> TensorSpec | None:
    """The tensors the experiment expects, if it declared them."""
    return TensorSpec.from_json(experiment.tensor_spec) if experiment.tensor_spec is not None else None


def _check_config(experiment: Experiment, *, has_model: bool) -> None:
    """Refuse a configuration the round engine could not run, naming the field at fault, and put the
    tensor spec in its stored form; ``has_model``: the experiment has a global model for its next
    round (an initial model, or an aggregate). A ``client_sampling`` without a seed is given one here,
    before it is saved."""
    try:
        aggregator = create_aggregator(experiment.aggregator, experiment.aggregator_params or {})
    except ConfigurationError as error:
        raise ValidationFailed(f"aggregator: {error}", code="invalid_aggregator") from None
    if aggregator.needs_parent and not has_model:
        raise ValidationFailed(
            f"aggregator: {aggregator.name!r} reads the current global model, and this experiment has "
            "none: create it with an initial_model",
            code="invalid_aggregator",
        )
    _check_asynchronous(experiment, has_model=has_model)
    try:
        norm_policy = NormPolicy.from_config(experiment.update_norm)
    except ConfigurationError as error:
        raise ValidationFailed(str(error), code="invalid_update_norm") from None
    if norm_policy is not None and not has_model:
        raise ValidationFailed(
            "update_norm bounds each update's change from the model it was trained from, and this "
            "experiment has none: create it with an initial_model",
            code="invalid_update_norm",
        )
    try:
        sampling = sampling_from_config(experiment.client_sampling)
    except ConfigurationError as error:
        raise ValidationFailed(str(error), code="invalid_client_sampling") from None
    if sampling is not None:  # stored with its seed (made now if absent), so every round draws from it
        experiment.client_sampling = sampling.to_config()
    try:
        policy = policy_from_config(effective_round_policy(experiment))
    except ConfigurationError as error:
        raise ValidationFailed(f"round policy: {error}", code="invalid_round_policy") from None
    fewest, needed = policy.fewest_updates(), aggregator.min_updates()
    if fewest is not None and fewest < needed:
        raise ValidationFailed(
            f"round policy: it can close a round with {fewest} update(s), and aggregator {aggregator.name!r} "
            f"with {json.dumps(aggregator.params.to_dict())} needs at least {needed}: wait for them, e.g. "
            f'{{"policy": "require_x_updates", "x": {needed}}}',
            code="invalid_round_policy",
        )
    if sampling is not None and sampling.clients is not None and sampling.clients < needed:
        raise ValidationFailed(
            f"client_sampling: a round selects {sampling.clients} client(s), and aggregator "
            f"{aggregator.name!r} with {json.dumps(aggregator.params.to_dict())} needs at least {needed} updates",
            code="invalid_client_sampling",
        )
    _check_secure_aggregation(experiment, has_model=has_model)
    _check_privacy(experiment, aggregator, sampling, has_model=has_model)
    experiment.evaluation = evaluations.config_check(experiment.evaluation)
    if experiment.tensor_spec is not None:
        try:
            # stored as the spec reads it: numpy's dtype names (float32) become codes (F32)
            experiment.tensor_spec = TensorSpec.from_json(experiment.tensor_spec).to_json()
        except InvalidWeights as error:
            raise ValidationFailed(f"tensor_spec: {error}", code="invalid_tensor_spec") from None
    if experiment.update_kind == UpdateKind.DELTA and experiment.legacy_mode:
        raise ValidationFailed(
            "update_kind 'delta' needs fma-client: legacy (fma-connect) clients send full weights",
            code="invalid_update_kind",
        )
    for field in json_schemas.SCHEMA_FIELDS:
        schema = getattr(experiment, field)
        if schema is not None:
            json_schemas.schema_check(field=field, schema=schema)
    lifecycle.finish_when_check(experiment.finish_when)


def _check_asynchronous(experiment: Experiment, *, has_model: bool) -> None:
    """Refuse an ``asynchronous`` setting, or a setting beside it, that asynchronous rounds cannot honour
    (DESIGN.md, "Asynchronous rounds"), and store the setting as it reads back. The one place to add a
    refusal of a combination with another mode."""
    try:
        mode = AsyncMode.from_config(experiment.asynchronous)
    except ConfigurationError as error:
        raise ValidationFailed(str(error), code="invalid_asynchronous") from None
    if mode is None:
        return
    try:
        check_aggregator(experiment.aggregator, mode)
        check_round_policy(effective_round_policy(experiment))
    except ConfigurationError as error:
        raise ValidationFailed(f"asynchronous: {error}", code="invalid_asynchronous") from None
    if not has_model:
        raise ValidationFailed(
            "asynchronous: each round steps the current global model by its updates' changes, and this "
            "experiment has none: create it with an initial_model",
            code="invalid_asynchronous",
        )
    if experiment.client_sampling is not None:
        raise ValidationFailed(
            "asynchronous: clients never wait in asynchronous mode, so no round selects clients: remove "
            "client_sampling (the buffer's K is how many updates a round takes)",
            code="invalid_asynchronous",
        )
    if experiment.furthest_base_agg:
        raise ValidationFailed(
            "asynchronous: bound the staleness with asynchronous.max_staleness (versions an update's base "
            "may lag behind), not furthest_base_agg",
            code="invalid_asynchronous",
        )
    experiment.asynchronous = mode.to_config()


def _check_secure_aggregation(experiment: Experiment, *, has_model: bool) -> None:
    """Refuse a ``secure_aggregation`` setting that is malformed, or combined with a setting that reads
    individual updates (``fma_core.secagg.config.conflicts``: extend that rule for a new mode), and
    store it with every default filled in."""
    try:
        secure = SecureAggregation.from_config(experiment.secure_aggregation)
    except ConfigurationError as error:
        raise ValidationFailed(str(error), code="invalid_secure_aggregation") from None
    if secure is None:
        return
    found = conflicts(
        aggregator=experiment.aggregator,
        update_norm=experiment.update_norm,
        legacy_mode=experiment.legacy_mode,
        asynchronous=experiment.asynchronous,
        privacy=experiment.privacy,
    )
    if experiment.tensor_spec is None and not has_model:
        found.append(
            "tensor_spec: a secure round's masked inputs have one fixed length; declare the tensors "
            "(tensor_spec) or create the experiment with an initial_model"
        )
    if found:
        raise ValidationFailed(
            "secure_aggregation cannot be combined with: " + "; ".join(found),
            code="invalid_secure_aggregation",
        )
    experiment.secure_aggregation = secure.to_config()


def _check_privacy(
    experiment: Experiment, aggregator: Aggregator, sampling: ClientSampling | None, *, has_model: bool
) -> None:
    """Refuse a ``privacy`` setting that is malformed or that the experiment's other settings break
    (the compatibility table of docs/privacy.md): a robust or selecting aggregator, an ``update_norm``,
    a non-uniform client sampling, integer tensors, no initial model, asynchronous rounds, secure
    aggregation. A new mode that cannot combine with central DP adds its refusal here."""
    try:
        policy = PrivacyPolicy.from_config(experiment.privacy)
    except ConfigurationError as error:
        raise ValidationFailed(str(error), code="invalid_privacy") from None
    if policy is None:
        return
    try:
        check_privacy(aggregator, experiment.update_norm, experiment_spec(experiment))
        check_for_privacy(sampling)
    except (ConfigurationError, InvalidWeights) as error:
        raise ValidationFailed(f"privacy: {error}", code="invalid_privacy") from None
    if experiment.asynchronous is not None:
        raise ValidationFailed(
            "privacy: the accountant charges each client per synchronous round, and asynchronous rounds "
            "take updates on stale bases with staleness discounts it does not model: remove asynchronous",
            code="invalid_privacy",
        )
    if experiment.secure_aggregation is not None:
        raise ValidationFailed(
            "privacy: central DP clips each update on the server, and with secure_aggregation the server "
            "never sees one: protect updates on the clients instead (fma_client.LocalPrivacy)",
            code="invalid_privacy",
        )
    if not has_model:
        raise ValidationFailed(
            "privacy clips each update's change from the model it was trained from, and this experiment "
            "has none: create it with an initial_model",
            code="invalid_privacy",
        )


def _check_name_free(experiment: Experiment) -> None:
    """Refuse a name the developer already gave another experiment (``fma apply`` finds experiments
    by name); the database's unique constraint settles a race between two such requests."""
    other = (
        Experiment.objects.filter(developer_id=experiment.developer_id, name=experiment.name)
        .exclude(pk=experiment.pk)
        .values_list("pk", flat=True)
        .first()
    )
    if other is not None:
        raise DuplicateName(
            f"name: you already have an experiment named {experiment.name!r} (#{other}); names are "
            "unique per developer: pick another, or rename that one"
        )


@contextmanager
def _name_guarded(experiment: Experiment) -> Iterator[None]:
    """Turn the unique constraint's refusal (a twin request that saved the same name first) into
    the same ``DuplicateName`` that ``_check_name_free`` raises."""
    try:
        yield
    except IntegrityError:
        _check_name_free(experiment)
        raise


def experiment_create(
    *,
    developer: AbstractBaseUser,
    initial_model: Weights | list | None = None,
    dry_run: bool = False,
    **config: Any,
) -> Experiment:
    """Create an experiment; its initial model, if given, becomes artifact 1.0.0 and sets the spec.

    ``initial_model`` is weights, or the original's JSON (a list of layers). ``dry_run``: make every
    check, store nothing, and return the unsaved experiment (``fma plan`` asks the service this way).
    """
    unknown = set(config) - set(CONFIG_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown experiment fields: {', '.join(sorted(unknown))}")
    experiment = Experiment(developer=developer, **config)
    if not experiment.allow_aggregation:  # the v1 switch: created paused
        experiment.state = ExperimentState.PAUSED
        experiment.state_changed_at = timezone.now()
    _check_config(experiment, has_model=initial_model is not None)
    if experiment.update_kind == UpdateKind.DELTA and initial_model is None:
        raise ValidationFailed(
            "update_kind 'delta' needs an initial_model: the first round's deltas apply to it",
            code="invalid_update_kind",
        )
    _check_name_free(experiment)
    if dry_run:
        if initial_model is not None:
            _initial_weights(experiment, initial_model)
        return experiment
    with _name_guarded(experiment), transaction.atomic():
        experiment.save()
        event_record(kind=EventKind.EXPERIMENT_CREATED, experiment=experiment, user=developer)
        if initial_model is not None:
            key = f"artifacts/{experiment.pk}/{uuid.uuid4().hex}.safetensors"
            with removed_on_failure(key):
                _store_initial_model(experiment, initial_model, key)
    return experiment


def _initial_weights(experiment: Experiment, weights: Weights | list) -> tuple[bytes, TensorSpec]:
    """An initial model's safetensors bytes and their spec, checked against the experiment's spec."""
    spec = experiment_spec(experiment)
    try:
        if isinstance(weights, list):
            weights = from_legacy_json(weights, spec)
        data = to_bytes(weights)
        return data, validate(data, spec)
    except InvalidWeights as error:
        raise WeightsInvalid(f"initial_model: {error}") from None


def _store_initial_model(experiment: Experiment, weights: Weights | list, key: str) -> ModelArtifact:
    data, actual = _initial_weights(experiment, weights)
    if experiment.tensor_spec is None:
        experiment.tensor_spec = actual.to_json()
        experiment.save(update_fields=["tensor_spec"])
    stored = weight_store().put(key, io.BytesIO(data))
    artifact = ModelArtifact.objects.create(
        experiment=experiment,
        version=INITIAL_VERSION,
        weights_key=key,
        content_id=stored.sha256,
        size_bytes=stored.size,
    )
    experiment.current_artifact = artifact
    experiment.save(update_fields=["current_artifact"])
    return artifact


def experiment_update(
    *, experiment: Experiment, user: AbstractBaseUser, dry_run: bool = False, **changes: Any
) -> Experiment:
    """Change an experiment's settings, refusing what its clients' updates or its rounds rule out.

    ``dry_run``: make every check and return the experiment as it would be, unsaved (``fma plan``
    asks the service this way, so that the service's rules stay in one place).
    """
    unknown = set(changes) - set(CONFIG_FIELDS)
    if unknown:
        raise ValidationFailed(f"these fields cannot be changed: {', '.join(sorted(unknown))}")
    if (
        "update_kind" in changes
        and changes["update_kind"] != experiment.update_kind
        and experiment.model_updates.exists()
    ):
        raise Conflict(
            "update_kind cannot change once clients have sent updates: they would be read as the "
            "other kind; create a new experiment instead"
        )
    has_model = experiment.aggregates.exists() or initial_artifact(experiment.pk) is not None
    if "privacy" in changes and changes["privacy"] != experiment.privacy and experiment.aggregates.exists():
        raise Conflict(
            "privacy cannot change once a round has run: the ledger's ε was spent under the settings the "
            "rounds ran with; create a new experiment instead"
        )
    if (
        "tensor_spec" in changes
        and changes["tensor_spec"] != experiment.tensor_spec
        and (has_model or experiment.model_updates.exists())
    ):
        raise Conflict(
            "tensor_spec cannot change once the experiment has a model or updates: they have the "
            "declared tensors; create a new experiment instead"
        )
    sampling = changes.get("client_sampling")
    stored = experiment.client_sampling
    if (
        isinstance(sampling, dict)
        and "seed" not in sampling
        and isinstance(stored, dict)
        and "seed" in stored
    ):
        # a sampling that names no seed keeps the experiment's: re-applying a file without one changes
        # nothing (``fma apply``), and the draws stay the ones its recorded seed gives
        changes["client_sampling"] = {**sampling, "seed": stored["seed"]}
    # the v1 switch is the lifecycle's pause and resume, moved after the other settings are saved (a
    # resume may depend on a finish_when changed in the same request)
    allowed = changes.pop("allow_aggregation", experiment.allow_aggregation)
    if not isinstance(allowed, bool):
        raise ValidationFailed(f"allow_aggregation must be true or false, not {str(allowed)[:40]!r}")
    for name, value in changes.items():
        setattr(experiment, name, value)
    _check_config(experiment, has_model=has_model)
    _check_name_free(experiment)
    if dry_run:
        if allowed != experiment.allow_aggregation:
            _check_switch(experiment, allowed)
            experiment.allow_aggregation = allowed
            experiment.state = ExperimentState.COLLECTING if allowed else ExperimentState.PAUSED
        return experiment
    with _name_guarded(experiment), transaction.atomic():
        experiment.save(update_fields=SETTINGS_COLUMNS)
        if allowed != experiment.allow_aggregation:
            wanted = ExperimentState.COLLECTING if allowed else ExperimentState.PAUSED
            lifecycle.experiment_set_state(experiment=experiment, state=wanted, user=user)
        lifecycle.finish_if_reached(experiment)
    return experiment


def _check_switch(experiment: Experiment, allowed: bool) -> None:
    """A dry run's answer to the v1 switch: what ``lifecycle.experiment_set_state`` would refuse."""
    if experiment.state in lifecycle.ENDED and not (
        allowed and experiment.state == ExperimentState.FINISHED and not lifecycle.finish_reason(experiment)
    ):
        raise Conflict(
            f"experiment {experiment.pk} is {experiment.get_state_display().lower()}; it cannot be "
            f"{'resumed' if allowed else 'paused'}",
            code="experiment_ended",
        )


def experiment_delete(*, experiment: Experiment) -> None:
    """Delete an experiment with everything it owns; its weight objects go once the delete commits."""
    keys = {
        *experiment.model_updates.values_list("weights_key", flat=True),
        *experiment.aggregates.values_list("weights_key", flat=True),
        *experiment.aggregates.exclude(state_key=None).values_list("state_key", flat=True),
        *experiment.artifacts.values_list("weights_key", flat=True),
    }
    store = weight_store()
    with transaction.atomic():
        experiment.delete()
        transaction.on_commit(lambda: [store.delete(key) for key in keys])


# Clients and enrollment


def enrollment_token_issue(
    *,
    experiment: Experiment,
    user: AbstractBaseUser,
    expires_in: timedelta | None = None,
    max_uses: int | None = None,
) -> tuple[EnrollmentToken, str]:
    """A new invitation to enroll: the row (to list or revoke it later) and the token itself,
    which is shown once and stored only as a hash."""
    token = credentials.new_secret()
    row = EnrollmentToken.objects.create(
        experiment=experiment,
        token_hash=credentials.hash_secret(token),
        created_by=user,
        expires_at=timezone.now() + expires_in if expires_in else None,
        max_uses=max_uses,
    )
    return row, token


def enrollment_token_revoke(*, token: EnrollmentToken, user: AbstractBaseUser) -> EnrollmentToken:
    """Stop a token from enrolling anyone else (clients it already enrolled stay enrolled)."""
    if token.revoked_at is None:
        with transaction.atomic():
            EnrollmentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            event_record(
                kind=EventKind.ENROLLMENT_TOKEN_REVOKED,
                experiment=token.experiment,
                user=user,
                token=token.pk,
            )
        token.refresh_from_db()
    return token


def _use_enrollment_token(experiment: Experiment, token: str) -> None:
    now = timezone.now()
    used = EnrollmentToken.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")),
        revoked_at__isnull=True,
        experiment=experiment,
        token_hash=credentials.hash_secret(token),
    ).update(uses=F("uses") + 1)
    if not used:
        raise Forbidden(
            "the enrollment token is unknown, expired, used up, revoked, or for another experiment",
            code="bad_enrollment_token",
        )


def client_register(
    *,
    experiment: Experiment,
    client: Client | None = None,
    enrollment_token: str | None = None,
    legacy: bool = False,
) -> tuple[Client, str | None]:
    """Enroll a client, creating it if needed; returns it and its new credential (None in legacy mode).

    ``legacy`` is the original's anonymous self-registration (or a known ``CLIENT-UUID``): allowed
    only when the experiment opted into legacy mode. Otherwise an enrollment token is needed
    unless the experiment has open enrollment.
    """
    if legacy and not experiment.legacy_mode:
        raise Forbidden(
            "this experiment does not accept legacy (CLIENT-UUID) clients; enroll with an enrollment token",
            code="legacy_disabled",
        )
    if client is not None and client.is_revoked:
        raise Forbidden("this client's credential is revoked", code="revoked")
    with transaction.atomic():
        existing = (
            Enrollment.objects.select_for_update().filter(experiment=experiment, client=client).first()
            if client is not None
            else None
        )
        if existing is not None:
            if existing.revoked_at is not None:
                raise Forbidden("this client's enrollment in the experiment was revoked", code="revoked")
            return client, None
        if not legacy:
            if enrollment_token:
                _use_enrollment_token(experiment, enrollment_token)
            elif not experiment.open_enrollment:
                raise Forbidden(
                    "enrolling in this experiment needs an enrollment token from its developer",
                    code="token_required",
                )
        secret = None
        if client is None:
            client = Client.objects.create()
            if not legacy:
                secret = credentials.new_secret()
                client.secret_hash = credentials.hash_secret(secret)
                client.save(update_fields=["secret_hash"])
        via = "legacy" if legacy else ("token" if enrollment_token else "open")
        Enrollment.objects.create(experiment=experiment, client=client, via=via)
        event_record(kind=EventKind.CLIENT_REGISTERED, experiment=experiment, client=client, via=via)
    return client, credentials.credential(client.uuid, secret) if secret else None


def client_rotate_credential(*, client: Client) -> str:
    """Replace the client's secret; the old credential stops working at once."""
    if client.is_revoked:
        raise Forbidden("this client's credential is revoked", code="revoked")
    secret = credentials.new_secret()
    with transaction.atomic():
        Client.objects.filter(pk=client.pk).update(secret_hash=credentials.hash_secret(secret))
        event_record(kind=EventKind.CREDENTIAL_ROTATED, client=client)
    client.secret_hash = credentials.hash_secret(secret)
    return credentials.credential(client.uuid, secret)


def client_revoke(*, client: Client, user: AbstractBaseUser | None = None, reason: str = "") -> Client:
    """Revoke the client's credential everywhere (staff); its updates stay as they are."""
    with transaction.atomic():
        client.revoked_at = timezone.now()
        client.save(update_fields=["revoked_at"])
        event_record(
            kind=EventKind.CREDENTIAL_REVOKED, client=client, user=user, reason=reason, scope="client"
        )
    return client


def enrollment_revoke(*, experiment: Experiment, client: Client, user: AbstractBaseUser) -> None:
    """Shut a client out of one experiment (what its developer may do); other experiments are untouched."""
    with transaction.atomic():
        revoked = Enrollment.objects.filter(
            experiment=experiment, client=client, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        if not revoked:
            raise NotFound("this client is not enrolled in the experiment")
        event_record(
            kind=EventKind.CREDENTIAL_REVOKED,
            experiment=experiment,
            client=client,
            user=user,
            scope="enrollment",
        )


def check_enrolled(experiment: Experiment, client: Client) -> None:
    """404 unless the client is enrolled in the experiment and neither it nor its enrollment is revoked."""
    if (
        client.is_revoked
        or not Enrollment.objects.filter(
            experiment=experiment, client=client, revoked_at__isnull=True
        ).exists()
    ):
        raise NotFound("no such experiment for this client")


# Aggregates and artifacts


def aggregate_publish(
    *, aggregate: ModelAggregate, version: str, user: AbstractBaseUser | None
) -> ModelArtifact:
    """Make an aggregate the experiment's current artifact under a new version name."""
    version = (version or "").strip()
    if not re.fullmatch(VERSION_PATTERN, version):
        raise ValidationFailed(
            f"version {version[:100]!r}: a version is {VERSION_RULE}", code="invalid_version"
        )
    experiment = aggregate.experiment
    try:
        with transaction.atomic():
            artifact = ModelArtifact.objects.create(
                experiment=experiment,
                aggregate=aggregate,
                version=version,
                weights_key=aggregate.weights_key,
                content_id=aggregate.content_id,
                size_bytes=aggregate.size_bytes,
            )
            Experiment.objects.filter(pk=experiment.pk).update(current_artifact=artifact)
            event_record(
                kind=EventKind.PUBLISHED,
                experiment=experiment,
                user=user,
                aggregate=aggregate.pk,
                version=version,
            )
    except IntegrityError:
        raise ValidationFailed(
            f"version {version!r} is already published for this experiment", code="duplicate_version"
        ) from None
    return artifact


def aggregate_set_validation_score(*, aggregate: ModelAggregate, score: float | None) -> ModelAggregate:
    aggregate.validation_score = score
    aggregate.save(update_fields=["validation_score"])
    return aggregate


def update_weights_prune(*, now: datetime | None = None) -> int:
    """Delete the bytes of updates whose round completed ``FMA_UPDATE_RETENTION_DAYS`` ago; returns how many.

    Raw updates are the bulk of the storage and, once aggregated, are needed only for audits;
    the update row stays with its hash and is marked ``weights_removed_on``, while aggregates
    and artifacts are kept. Unset (the default) keeps everything. Each row is marked before
    its bytes go, so a crash in between leaves an unreferenced object, never a dangling row.
    """
    days = settings.FMA_UPDATE_RETENTION_DAYS
    if days is None:
        return 0
    now = now or timezone.now()
    store = weight_store()
    due = ModelUpdate.objects.filter(
        weights_removed_on__isnull=True, aggregate__created_on__lt=now - timedelta(days=float(days))
    ).select_related("experiment", "client")
    removed = 0
    for update in due.iterator():
        with transaction.atomic():
            if not ModelUpdate.objects.filter(pk=update.pk, weights_removed_on__isnull=True).update(
                weights_removed_on=now
            ):
                continue
            event_record(
                kind=EventKind.UPDATE_WEIGHTS_REMOVED,
                experiment=update.experiment,
                client=update.client,
                update=update.pk,
                retention_days=days,
            )
        store.delete(update.weights_key)
        removed += 1
    return removed
