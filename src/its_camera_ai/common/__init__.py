"""The runtime every ITS Camera AI service shares.

Configuration, the gRPC host (health, reflection, graceful shutdown, interceptors), the
HTTP side port, logging and tracing, the error tree and its wire mapping, and storage
(asyncpg pool with the embedded PostgreSQL default, migrations, Redis), and the rules every
service shares: resource names, reconnect backoff, circuit breakers.
"""

from __future__ import annotations

from its_camera_ai.common._backoff import Backoff
from its_camera_ai.common._breaker import BreakerState, CircuitBreaker, CircuitOpenError
from its_camera_ai.common._config import (
    AnalyticsEngineSettings,
    AnalyticsServiceSettings,
    ConfigError,
    DatabaseSettings,
    DecoderSettings,
    GrpcSettings,
    HttpSettings,
    InferenceSettings,
    LoggingSettings,
    PixelFormatName,
    QueryCacheSettings,
    QueryServiceSettings,
    RedisSettings,
    Settings,
    TracingSettings,
    TrackerSettings,
    load_settings,
)
from its_camera_ai.common._egress_settings import EgressSettings
from its_camera_ai.common._errors import (
    ERROR_DOMAIN,
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    ItsError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    quoted,
)
from its_camera_ai.common._interceptors import dependency_error
from its_camera_ai.common._listing import (
    FieldKind,
    ListField,
    ListingSpec,
    ListQuery,
    page_token_after,
)
from its_camera_ai.common._logging import configure_logging
from its_camera_ai.common._migrations import (
    Migration,
    MigrationError,
    MigrationSet,
    apply_migrations,
)
from its_camera_ai.common._names import (
    camera_id_from_name,
    is_resource_id,
    is_token,
    parse_camera_name,
)
from its_camera_ai.common._peers import PLAINTEXT, PeerAccess
from its_camera_ai.common._pubsub import follow_channel
from its_camera_ai.common._security_settings import (
    ClientTlsSettings,
    JwtSettings,
    RateLimitSettings,
    SecuritySettings,
    ServerTlsSettings,
)
from its_camera_ai.common._server import Runtime, ServiceHost, ServiceUnit, serve
from its_camera_ai.common._socket_reads import SOCKET_READ_BYTES, bound_asyncio_socket_reads
from its_camera_ai.common._storage import (
    POSTGRES_DOWN,
    POSTGRES_FAILURES,
    REDIS_DOWN,
    REDIS_FAILURES,
    Database,
    create_redis,
)

__all__ = [
    "ERROR_DOMAIN",
    "PLAINTEXT",
    "POSTGRES_DOWN",
    "POSTGRES_FAILURES",
    "REDIS_DOWN",
    "REDIS_FAILURES",
    "SOCKET_READ_BYTES",
    "AbortedError",
    "AlreadyExistsError",
    "AnalyticsEngineSettings",
    "AnalyticsServiceSettings",
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientTlsSettings",
    "ConfigError",
    "Database",
    "DatabaseSettings",
    "DeadlineExceededError",
    "DecoderSettings",
    "EgressSettings",
    "FailedPreconditionError",
    "FieldKind",
    "FieldViolation",
    "GrpcSettings",
    "HttpSettings",
    "InferenceSettings",
    "InternalError",
    "InvalidArgumentError",
    "ItsError",
    "JwtSettings",
    "ListField",
    "ListQuery",
    "ListingSpec",
    "LoggingSettings",
    "Migration",
    "MigrationError",
    "MigrationSet",
    "NotFoundError",
    "OutOfRangeError",
    "PeerAccess",
    "PermissionDeniedError",
    "PixelFormatName",
    "QueryCacheSettings",
    "QueryServiceSettings",
    "RateLimitSettings",
    "RedisSettings",
    "ResourceExhaustedError",
    "Runtime",
    "SecuritySettings",
    "ServerTlsSettings",
    "ServiceHost",
    "ServiceUnit",
    "Settings",
    "TracingSettings",
    "TrackerSettings",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "apply_migrations",
    "bound_asyncio_socket_reads",
    "camera_id_from_name",
    "configure_logging",
    "create_redis",
    "dependency_error",
    "follow_channel",
    "is_resource_id",
    "is_token",
    "load_settings",
    "page_token_after",
    "parse_camera_name",
    "quoted",
    "serve",
]
