"""fma-client: take part in a federated experiment, or run one, from Python or the ``fma`` command.

Data holders use ``Client`` (pull, push, wait_for_new_model, report_evaluation, report_scores,
participation) and, for asynchronous experiments, ``train_loop`` (pull, train, push, repeat); developers use
``Developer``; scripts written for the original fma-connect use ``WebClient`` unchanged.
"""

__version__ = "0.4.0"

from fma_client.client import Client, Model, Participation
from fma_client.compat import WebClient
from fma_client.developer import Developer
from fma_client.errors import (
    AuthenticationError,
    CheckTimeout,
    ConflictError,
    FmaClientError,
    LockedOut,
    NotFound,
    NotSelected,
    PermissionDenied,
    ServerUnavailable,
    TokenExpired,
    TransferError,
    ValidationError,
    WaitTimeout,
)
from fma_client.loop import LoopResult, Trained, train_loop
from fma_client.privacy import LocalPrivacy
from fma_client.results import (
    Aggregate,
    AggregateDetail,
    ApiToken,
    Artifact,
    EnrollmentToken,
    Evaluation,
    EvaluationSummary,
    Experiment,
    IssuedEnrollmentToken,
    MetricSummary,
    Result,
    RoundMetrics,
    Score,
    Update,
)
from fma_client.secure import SecurePush, SecureRoundFailed
from fma_client.transport import Retry
from fma_client.weights import as_weights, read_file, to_list, write_file

__all__ = [
    "Aggregate",
    "AggregateDetail",
    "ApiToken",
    "Artifact",
    "AuthenticationError",
    "CheckTimeout",
    "Client",
    "ConflictError",
    "Developer",
    "EnrollmentToken",
    "Evaluation",
    "EvaluationSummary",
    "Experiment",
    "FmaClientError",
    "IssuedEnrollmentToken",
    "LocalPrivacy",
    "LockedOut",
    "LoopResult",
    "MetricSummary",
    "Model",
    "NotFound",
    "NotSelected",
    "Participation",
    "PermissionDenied",
    "Result",
    "Retry",
    "RoundMetrics",
    "Score",
    "SecurePush",
    "SecureRoundFailed",
    "ServerUnavailable",
    "TokenExpired",
    "Trained",
    "TransferError",
    "Update",
    "ValidationError",
    "WaitTimeout",
    "WebClient",
    "__version__",
    "as_weights",
    "read_file",
    "to_list",
    "train_loop",
    "write_file",
]
