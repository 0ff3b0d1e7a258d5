"""The metadata FMA keeps in the database; weight bytes live in a ``WeightStore``, rows hold their keys.

Names follow DESIGN.md. The v1 API calls an Experiment a "federated model" (``/api/v1/models/``)
and its foreign key ``federated_model``; the serializers translate, the tables keep our names.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models


class UpdateKind(models.TextChoices):
    """What clients send: their trained weights, or the change from the model they trained from."""

    WEIGHTS = "weights"
    DELTA = "delta"


class ExperimentState(models.TextChoices):
    """Where an experiment is in its life (``fma_django.lifecycle`` moves it): only ``collecting`` runs
    rounds; the last three are ends, after which no update is accepted."""

    COLLECTING = "collecting"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"
    BUDGET_SPENT = "budget_spent"


class Experiment(models.Model):
    """A federated model being trained: its aggregator, round policy, expected tensors and who may join."""

    name = models.CharField(max_length=255)
    developer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="experiments"
    )
    aggregator = models.CharField(max_length=64, default="fedavg")
    aggregator_params = models.JSONField(default=dict, blank=True)
    # The original's form (a requirement name and positional args) and ours (a policy config);
    # ``round_policy`` wins when both are given.
    requirement = models.CharField(max_length=64, blank=True, default="")
    requirement_args = models.JSONField(null=True, blank=True)
    round_policy = models.JSONField(null=True, blank=True)
    tensor_spec = models.JSONField(null=True, blank=True, help_text="[{name, dtype, shape}, ...]")
    update_schema = models.JSONField(
        null=True,
        blank=True,
        help_text="the original's JSON Schema of an update's JSON 'data' (v1 JSON path)",
    )
    metrics_schema = models.JSONField(null=True, blank=True, help_text="JSON Schema of an update's metrics")
    client_agg_results_schema = models.JSONField(null=True, blank=True)
    furthest_base_agg = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="accept updates trained on one of the newest k aggregates (k=1: only the newest)",
    )
    allow_aggregation = models.BooleanField(
        default=True, help_text="the v1 switch: true while the state is collecting (false pauses rounds)"
    )
    state = models.CharField(
        max_length=16, choices=ExperimentState.choices, default=ExperimentState.COLLECTING
    )
    state_reason = models.CharField(
        max_length=500, blank=True, default="", help_text="why it is in this state"
    )
    state_changed_at = models.DateTimeField(null=True, blank=True)
    finish_when = models.JSONField(
        null=True,
        blank=True,
        help_text='when the experiment is finished: {"rounds": 30} and/or {"metric": "accuracy", '
        '"source": "evaluation" or "training", "at_least": 0.9 (or "at_most")}',
    )
    open_enrollment = models.BooleanField(default=False, help_text="clients may enroll without a token")
    legacy_mode = models.BooleanField(
        default=False,
        help_text="WEAKER: anonymous self-registration and the CLIENT-UUID header as the only credential",
    )
    max_update_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    update_kind = models.CharField(
        max_length=16,
        choices=UpdateKind.choices,
        default=UpdateKind.WEIGHTS,
        help_text="delta: clients push trained - base; rounds read each update as its base + delta",
    )
    update_norm = models.JSONField(
        null=True,
        blank=True,
        help_text="a bound on each update's change from its base: {'mode': 'refuse' or 'clip', 'bound': 5.0} "
        "or 'adaptive': {'multiplier': 3, 'window': 5} instead of 'bound' (fma_core.norms)",
    )
    privacy = models.JSONField(
        null=True,
        blank=True,
        help_text="central differential privacy (fma_core.privacy): {'clip': {'bound': 1.0} or {'adaptive': "
        "{'initial': 0.1, 'target_quantile': 0.5, 'learning_rate': 0.2}}, 'noise_multiplier': 1.0, "
        "'expected_clients': 20, 'epsilon': 8, 'delta': 1e-5}; fixed once a round has run",
    )
    # the key of the privacy noise (fma_core.privacy), made on first need: never shown, logged or exported
    privacy_secret = models.BinaryField(null=True, blank=True, editable=False)
    evaluation = models.JSONField(
        null=True,
        blank=True,
        help_text="the metrics measured on held-out data and reported against each aggregate, each with its "
        'goal: {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}, and optionally "schema", '
        "a JSON Schema of the reported metrics (fma_django.evaluations)",
    )
    client_sampling = models.JSONField(
        null=True,
        blank=True,
        help_text='clients per round: {"clients": 10} or {"fraction": 0.1, "min_clients": 2}, with "seed" '
        '(made if absent) and "mode" ("uniform", or "longest_waiting", not usable with differential '
        "privacy); empty: every enrolled client every round",
    )
    asynchronous = models.JSONField(
        null=True,
        blank=True,
        help_text='buffered asynchronous rounds: {"buffer": K, "staleness": {"function": "fedbuff"} (or '
        '"constant", "polynomial" with "a", "hinge" with "a" and "b"), "max_staleness": 20, '
        '"server_learning_rate": 1.0} (fma_core.asynchronous); empty: synchronous rounds',
    )
    secure_aggregation = models.JSONField(
        null=True,
        blank=True,
        help_text="SecAgg+: the server learns only the sum of the updates; {} for the defaults "
        "(fma_core.secagg.config, docs/secure_aggregation.md); empty: plain updates",
    )
    current_artifact = models.OneToOneField(
        "ModelArtifact", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_on = models.DateTimeField(auto_now_add=True)
    last_modified = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_on", "-id"]
        # ``fma apply`` matches declared experiments to these rows by name.
        constraints = [
            models.UniqueConstraint(fields=["developer", "name"], name="fma_experiment_name_per_developer"),
            # the v1 switch mirrors the lifecycle: rounds run only while collecting
            models.CheckConstraint(
                condition=models.Q(allow_aggregation=True, state="collecting")
                | (models.Q(allow_aggregation=False) & ~models.Q(state="collecting")),
                name="fma_experiment_aggregation_while_collecting",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    @property
    def evaluation_goals(self) -> dict[str, str]:
        """Each declared evaluation metric's goal (``max`` or ``min``); empty when none is declared."""
        metrics = (self.evaluation or {}).get("metrics") or {}
        return {name: spec["goal"] for name, spec in metrics.items()}


class Client(models.Model):
    """A data holder. ``uuid`` is its public id; the secret is kept only as a SHA-256 hash."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    experiments = models.ManyToManyField(Experiment, through="Enrollment", related_name="clients")
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_on", "-id"]

    def __str__(self) -> str:
        return str(self.uuid)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class Enrollment(models.Model):
    """A client's membership of one experiment; revoking it shuts the client out of that experiment only."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="enrollments")
    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="enrollments")
    via = models.CharField(
        max_length=16, choices=[("token", "token"), ("open", "open"), ("legacy", "legacy")]
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["experiment", "client"], name="fma_one_enrollment_per_client")
        ]


class EnrollmentToken(models.Model):
    """A developer-issued invitation to enroll in an experiment; only its hash is kept."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="enrollment_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(
        null=True, blank=True, help_text="a leaked token is revoked, not deleted"
    )
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_on", "-id"]


class DeveloperToken(models.Model):
    """A developer's API token (``Authorization: Token …``). Only its SHA-256 is kept: the secret is
    shown once, when it is made. A developer may hold several (one per machine or script); each
    expires ``FMA_TOKEN_TTL_DAYS`` after it was made, and revoking one deletes it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="developer_tokens"
    )
    digest = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=100, blank=True, help_text="what the developer called it, e.g. laptop")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.user} · {self.name or 'token'} #{self.pk}"


class ModelArtifact(models.Model):
    """A published, versioned model (FMA's "publish"); version "1.0.0" is the initial model."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="artifacts")
    aggregate = models.ForeignKey(
        "ModelAggregate", null=True, blank=True, on_delete=models.RESTRICT, related_name="artifacts"
    )
    version = models.CharField(max_length=255)
    weights_key = models.CharField(max_length=512)
    content_id = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_on", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "version"], name="unique version to model")
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id} v{self.version}"


class ModelAggregate(models.Model):
    """One version of the global model, produced by exactly one round."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="aggregates")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.RESTRICT, related_name="children"
    )
    round_number = models.PositiveIntegerField()
    weights_key = models.CharField(max_length=512)
    content_id = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    aggregator = models.CharField(max_length=64)
    aggregator_params = models.JSONField(default=dict)
    duration_seconds = models.FloatField()
    peak_memory_bytes = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="highest resident memory of the worker(s) computing the round"
    )
    # A stateful algorithm (e.g. FedAdam's moments) leaves its server state as a safetensors file beside
    # the aggregate; the next round continues from it. Both null when the algorithm keeps no state.
    state_key = models.CharField(
        max_length=512,
        null=True,
        blank=True,
        help_text="where the algorithm's server state after this round is stored",
    )
    state_content_id = models.CharField(
        max_length=64,
        null=True,
        blank=True,
        help_text="SHA-256 of the algorithm's server state after this round; null when it keeps none",
    )
    report = models.JSONField(
        default=dict,
        blank=True,
        help_text="what the round decided that the weights do not show, by section (e.g. 'aggregator': "
        "the updates a robust algorithm selected and each one's score)",
    )
    validation_score = models.FloatField(null=True, blank=True)
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-round_number", "-id"]
        constraints = [
            # The last line of defence against double aggregation: a round number is used once.
            models.UniqueConstraint(fields=["experiment", "round_number"], name="fma_one_aggregate_per_round")
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id} round {self.round_number}"


class UpdateStatus(models.TextChoices):
    PENDING = "pending"
    CONSUMED = "consumed"
    QUARANTINED = "quarantined"


class ModelUpdate(models.Model):
    """One client's contribution to a round; consumed by exactly one aggregate, or quarantined."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="model_updates")
    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="model_updates")
    status = models.CharField(max_length=16, choices=UpdateStatus.choices, default=UpdateStatus.PENDING)
    status_reason = models.TextField(blank=True, default="")
    base_aggregate = models.ForeignKey(
        ModelAggregate, null=True, blank=True, on_delete=models.SET_NULL, related_name="updates_using_this"
    )
    base_round = models.PositiveIntegerField(
        default=0, help_text="round of the base aggregate; 0 = initial model"
    )
    aggregate = models.ForeignKey(
        ModelAggregate, null=True, blank=True, on_delete=models.RESTRICT, related_name="updates"
    )
    aggregate_weight = models.FloatField(
        null=True, blank=True, help_text="this update's share in the aggregate"
    )
    num_examples = models.PositiveBigIntegerField(default=1)
    metrics = models.JSONField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)
    weights_key = models.CharField(max_length=512)
    content_id = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    weights_removed_on = models.DateTimeField(
        null=True, blank=True, help_text="when the retention period removed its bytes (the hash stays)"
    )
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_on", "-id"]
        indexes = [models.Index(fields=["experiment", "status"], name="fma_update_exp_status")]
        constraints = [
            models.UniqueConstraint(fields=["client", "idempotency_key"], name="fma_update_idempotency_key"),
            models.UniqueConstraint(
                fields=["experiment", "client", "base_round", "content_id"], name="fma_update_content_base"
            ),
        ]

    def __str__(self) -> str:
        return f"update {self.pk} ({self.status})"


class UploadState(models.TextChoices):
    OPEN = "open"
    CHECKING = "checking"  # completed by its client; a runner joins and checks it (large uploads)
    COMPLETED = "completed"
    ABORTED = "aborted"
    EXPIRED = "expired"
    REJECTED = "rejected"


class UploadSession(models.Model):
    """An update's bytes arriving in parts (a multipart upload of the weight store), then completed.

    The metadata is checked when the session starts and kept here; the bytes go to
    ``weights_key`` through the store's upload ``store_upload_id`` and become a ``ModelUpdate``
    when the client completes the session. ``size_bytes`` and ``sha256`` are what the client
    declared: the store's own measurement must match them.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="uploads")
    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="uploads")
    state = models.CharField(max_length=16, choices=UploadState.choices, default=UploadState.OPEN)
    reason = models.TextField(blank=True, default="", help_text="why the upload was rejected")
    reason_code = models.CharField(
        max_length=64, blank=True, default="", help_text="the refusal's machine-readable code"
    )
    weights_key = models.CharField(max_length=512)
    store_upload_id = models.CharField(max_length=1024)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    part_bytes = models.PositiveBigIntegerField()
    num_examples = models.PositiveBigIntegerField(default=1)
    base_aggregate = models.ForeignKey(
        ModelAggregate, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    base_round = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)
    update = models.ForeignKey(
        ModelUpdate, null=True, blank=True, on_delete=models.SET_NULL, related_name="uploads"
    )
    created_on = models.DateTimeField(auto_now_add=True)
    updated_on = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_on", "-id"]
        indexes = [models.Index(fields=["state", "created_on"], name="fma_upload_state_created")]
        constraints = [
            models.UniqueConstraint(fields=["client", "idempotency_key"], name="fma_upload_idempotency_key")
        ]

    def __str__(self) -> str:
        return f"upload {self.uuid} ({self.state})"

    @property
    def part_count(self) -> int:
        return -(-self.size_bytes // self.part_bytes)

    def part_range(self, number: int) -> tuple[int, int]:
        """``(offset, size)`` of part ``number`` (1-based): every part is ``part_bytes`` but the last."""
        offset = (number - 1) * self.part_bytes
        return offset, min(self.part_bytes, self.size_bytes - offset)

    def part_sizes(self) -> list[int]:
        return [self.part_range(number)[1] for number in range(1, self.part_count + 1)]


class EvaluationSource(models.TextChoices):
    """Who measured an aggregate on held-out data: an enrolled client, or the experiment's developer."""

    CLIENT = "client"
    DEVELOPER = "developer"


class Evaluation(models.Model):
    """An aggregate measured on held-out data: named metrics over ``num_examples`` examples.

    Reported by an enrolled client (on its own held-out data; the v1 API's ``client_aggregate_scores/``
    calls it a score) or by the experiment's developer (an evaluator of her own), at most once per
    client, or per developer, and aggregate. ``metrics`` holds only finite numbers, so evaluations
    combine into one figure per aggregate and metric (``selectors.evaluation_summary``): their mean
    weighted by examples. ``validation_results`` is what a v1 client sent, kept as sent (free-form).
    """

    aggregate = models.ForeignKey(ModelAggregate, on_delete=models.CASCADE, related_name="evaluations")
    source = models.CharField(
        max_length=16, choices=EvaluationSource.choices, default=EvaluationSource.CLIENT
    )
    client = models.ForeignKey(
        Client, null=True, blank=True, on_delete=models.CASCADE, related_name="evaluations"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="the developer (or staff) who reported a developer's evaluation",
    )
    metrics = models.JSONField(default=dict, blank=True, help_text="metric name → finite number")
    num_examples = models.PositiveBigIntegerField(default=1, help_text="held-out examples it was measured on")
    validation_results = models.JSONField(
        null=True, blank=True, help_text="a v1 score's results as the client sent them (free-form)"
    )
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_on", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["aggregate", "client"], name="fma_one_evaluation_per_client"),
            models.UniqueConstraint(
                fields=["aggregate", "user"],
                condition=models.Q(source="developer"),
                name="fma_one_evaluation_per_developer",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(source="client", client__isnull=False, user__isnull=True)
                    | models.Q(source="developer", client__isnull=True)
                ),
                name="fma_evaluation_source",
            ),
        ]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of aggregate {self.aggregate_id} ({self.source})"


class RoundSelection(models.Model):
    """The clients drawn for one round of an experiment that samples clients (``fma_core.sampling``).

    Drawn once, at the round's first need (a client asking, a push, a claim), from the seed and
    the clients then enrolled, and never drawn again: clients enrolling or revoked meanwhile do not
    change it. One row per experiment and round, so two requests drawing at once agree on the first.
    """

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="round_selections")
    round_number = models.PositiveIntegerField()
    seed = models.PositiveBigIntegerField()
    mode = models.CharField(max_length=32)
    clients = models.JSONField(default=list, help_text="the selected clients' ids, sorted")
    enrolled = models.PositiveIntegerField(help_text="how many clients were enrolled when it was drawn")
    created_on = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-round_number", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "round_number"], name="fma_one_selection_per_round")
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id} round {self.round_number}: {len(self.clients)} clients"

    def to_report(self) -> dict:
        """The round report's "sampling" section: enough to recompute the draw (``fma_core.sampling.draw``)."""
        return {
            "seed": self.seed,
            "mode": self.mode,
            "round": self.round_number,
            "enrolled": self.enrolled,
            "selected": list(self.clients),
        }


class SecureRoundRow(models.Model):
    """One secure round of an experiment with ``secure_aggregation``: its stage and its protocol state.

    ``state`` is ``fma_core.secagg.SecureRound.to_json()``: public keys, the encrypted shares being
    relayed, where each masked input is stored, the shares revealed at unmasking — never an update
    in the clear. Every request changes it under this row's lock (``fma_django.secure_rounds``).
    """

    OPEN_STAGES = ("advertise", "share_keys", "masked_input", "unmasking")
    """The protocol's stages, while clients answer."""
    SUMMING = "summing"
    """Every share is in (``state`` is unmasked): the runner sums the masked inputs into the aggregate."""
    LIVE_STAGES = (*OPEN_STAGES, SUMMING)
    """A round still under way: its masked inputs (``state["inputs"]``) are still needed."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="secure_rounds")
    round_number = models.PositiveIntegerField()
    stage = models.CharField(max_length=16)
    state = models.JSONField()
    reason = models.TextField(blank=True, default="", help_text="why the round failed")
    aggregate = models.OneToOneField(
        ModelAggregate, null=True, blank=True, on_delete=models.SET_NULL, related_name="secure_round"
    )
    created_on = models.DateTimeField(auto_now_add=True)
    updated_on = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-round_number", "-id"]
        constraints = [
            # a failed attempt is kept (with its reason) beside the next attempt at the same round
            models.UniqueConstraint(
                fields=["experiment", "round_number"],
                condition=~models.Q(stage="failed"),
                name="fma_one_secure_round_per_round",
            )
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id} secure round {self.round_number} ({self.stage})"


class RoundLease(models.Model):
    """The claim row of an experiment's current round: token, holder and expiry (epoch seconds).

    Taken and released only with conditional UPDATEs, which are atomic on PostgreSQL and SQLite.
    """

    experiment = models.OneToOneField(
        Experiment, on_delete=models.CASCADE, primary_key=True, related_name="lease"
    )
    token = models.CharField(max_length=64, blank=True, default="")
    worker = models.CharField(max_length=255, blank=True, default="")
    round_number = models.PositiveIntegerField(default=0)
    expires_at = models.FloatField(default=0.0)


class EventKind(models.TextChoices):
    EXPERIMENT_CREATED = "experiment_created"
    CLIENT_REGISTERED = "client_registered"
    ENROLLMENT_TOKEN_REVOKED = "enrollment_token_revoked"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    UPDATE_QUARANTINED = "update_quarantined"
    UPLOAD_ABORTED = "upload_aborted"
    UPLOAD_EXPIRED = "upload_expired"
    UPDATE_WEIGHTS_REMOVED = "update_weights_removed"
    ROUND_STARTED = "round_started"
    ROUND_COMPLETED = "round_completed"
    ROUND_FAILED = "round_failed"
    PUBLISHED = "published"
    AGGREGATION_PAUSED = "aggregation_paused"
    AGGREGATION_RESUMED = "aggregation_resumed"
    EXPERIMENT_ENDED = "experiment_ended"
    CREDENTIAL_ROTATED = "credential_rotated"
    CREDENTIAL_REVOKED = "credential_revoked"


class AppendOnly(Exception):
    """The event log is never rewritten."""


class Event(models.Model):
    """Append-only history of what happened to an experiment and why."""

    kind = models.CharField(max_length=32, choices=EventKind.choices)
    experiment = models.ForeignKey(
        Experiment, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    client = models.ForeignKey(
        Client, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.JSONField(default=dict, blank=True)
    created_on = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_on", "-id"]

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise AppendOnly("events are never changed")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> None:
        raise AppendOnly("events are never deleted")

    def __str__(self) -> str:
        return f"{self.created_on:%Y-%m-%d %H:%M:%S} {self.kind}"
