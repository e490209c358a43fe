"""Keel's configuration: every environment variable Keel reads, validated once at start-up.

Only the server layer reads the environment. Everything below it receives explicit arguments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from server.auth import User

# LangGraph Studio (a hosted page, US and EU) and pages served from this machine (e.g. agent-chat-ui in development).
STUDIO_AND_LOOPBACK_ORIGINS = (
    "https://smith.langchain.com,https://eu.smith.langchain.com,"
    "http://localhost:*,http://127.0.0.1:*,http://[::1]:*"
)


class Settings(BaseSettings):
    """Validated settings. Field names map to upper-case environment variables (see README)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, description="Postgres URL; unset = embedded Postgres")
    keel_home: Path = Field(default=Path(".keel"), description="embedded Postgres data and local state")
    keel_model: str | None = Field(
        default=None, description="provider:model for init_chat_model; unset = offline engine"
    )
    keel_critic_model: str | None = Field(
        default=None, description="model for the critic; defaults to KEEL_MODEL"
    )
    keel_embeddings: str | None = Field(
        default=None, description="provider:model for init_embeddings; unset = offline MiniLM"
    )
    keel_embed_dims: int | None = Field(default=None, description="vector size when KEEL_EMBEDDINGS is set")
    keel_model_cache: Path | None = Field(
        default=None,
        description="where the offline embedding model's int8 graph is kept (default KEEL_HOME/models)",
    )
    keel_embed_load: Literal["background", "first-use", "start"] = Field(
        default="background",
        description="when `keel serve` loads the offline embedding model: in a thread right after start (the "
        "health route answers meanwhile), at the first embedding, or before serving",
    )
    keel_api_keys: str = Field(
        default="", description="comma-separated key:user_id[:role+role[:tenant]]; empty = single local user"
    )
    keel_keep_checkpoints: int = Field(default=100, ge=0, description="checkpoints kept per thread (0 = all)")
    keel_events_ttl_seconds: float = Field(
        default=604800, ge=0, description="seconds a finished run keeps its stream events (0 = forever)"
    )
    keel_reflection: bool = Field(
        default=False, description="after each run, store durable user facts as memories"
    )
    keel_history: Literal["summarize", "trim"] = Field(
        default="summarize",
        description="over-budget earlier turns: summarize and drop them, or only trim the prompt",
    )
    keel_webhook_url: str | None = Field(default=None, description="where send_webhook deliveries go")
    keel_mcp_approval: bool = Field(default=False, description="let MCP clients run approval-gated tools")
    keel_mcp_servers: str = Field(default="", description="JSON: external MCP servers to import as tools")
    keel_namespace: str = Field(default="default", description="document corpus the agent retrieves from")
    keel_log_level: str = "INFO"
    keel_log_json: bool = False
    keel_max_body_bytes: int = 1_000_000
    keel_pool_min: int = 1
    keel_pool_max: int = 10
    keel_pool_max_idle: float = 60.0
    keel_pool_max_lifetime: float = 1800.0
    keel_critic_threshold: float = 0.7
    keel_max_revisions: int = 2
    keel_max_steps: int = 24
    keel_max_tool_calls: int = 8
    keel_durability: Literal["sync", "async", "exit"] = "sync"
    keel_retrieve_k: int = 4
    keel_hnsw_ef_search: int = Field(
        default=100, ge=1, le=1000, description="HNSW candidate list per vector search (pgvector default 40)"
    )
    keel_workers: int = Field(
        default=2, ge=0, le=64, description="run slots of the in-process worker of `keel serve`"
    )
    keel_worker_concurrency: int = Field(
        default=4, ge=1, le=256, description="run slots of one `keel worker`"
    )
    keel_lease_seconds: float = Field(
        default=5.0,
        gt=0.5,
        le=600,
        description="run lease; a hung worker's run resumes after it (a dead one's at once)",
    )
    keel_max_attempts: int = Field(
        default=3, ge=1, le=100, description="attempts before a run whose worker keeps dying errors out"
    )
    keel_drain_seconds: float = Field(
        default=30.0, ge=0, description="SIGTERM grace period for in-flight runs"
    )
    keel_malloc_tuning: bool = Field(
        default=True,
        description="serve/worker: 2 malloc arenas, blocks from 128 KB mapped and returned when freed (glibc)",
    )
    keel_cron_poll_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="how often each worker's cron scheduler looks for due crons (a schedule's unit is a minute)",
    )
    keel_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="`keel worker`: serve GET /metrics on this port (unset = none)",
    )
    keel_metrics_host: str = Field(default="127.0.0.1", description="`keel worker`: address of its /metrics")
    keel_otel_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP collector base URL for OpenTelemetry traces (unset = no tracing)"
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, description="the standard OpenTelemetry variable, used when KEEL_OTEL_ENDPOINT is unset"
    )
    otel_service_name: str = Field(default="keel", description="service.name of Keel's spans")
    keel_graph: str | None = Field(
        default=None,
        description="module:attr of a StateGraph builder (or a function of the Toolbox) served as the `agent` "
        "graph in place of Keel's agent; a shorthand beside KEEL_CONFIG",
    )
    keel_config: str | None = Field(
        default=None,
        description="the langgraph.json whose graphs are served (unset: ./langgraph.json when present, else Keel's "
        "agent only; empty: Keel's agent only)",
    )
    keel_cors_origins: str = Field(
        default=STUDIO_AND_LOOPBACK_ORIGINS,
        description="comma-separated browser origins allowed to call the API; '*' in an entry matches a host or "
        "port part; a lone '*' allows every origin",
    )
    keel_allowed_hosts: str = Field(
        default="",
        description="without API keys, the Host names served besides localhost, 127.0.0.1 and ::1 "
        "(comma-separated; '*' serves any)",
    )
    # Ceilings a request cannot raise a run's budgets past (per deployment): one request buys bounded work.
    keel_limit_steps: int = Field(
        default=100, ge=1, le=100_000, description="highest context.max_steps a request may set"
    )
    keel_limit_revisions: int = Field(default=5, ge=0, le=1000, description="highest context.max_revisions")
    keel_limit_tool_calls: int = Field(
        default=32, ge=0, le=10_000, description="highest context.max_tool_calls"
    )
    keel_limit_retrieve_k: int = Field(default=50, ge=1, le=1000, description="highest context.retrieve_k")
    keel_limit_history_tokens: int = Field(
        default=100_000, ge=0, le=10_000_000, description="highest context.history_tokens"
    )
    keel_limit_recursion: int = Field(
        default=110, ge=1, le=1_000_000, description="highest config.recursion_limit (super-steps of one run)"
    )

    @model_validator(mode="after")
    def _defaults_within_ceilings(self) -> Settings:
        pairs = [
            ("KEEL_MAX_STEPS", self.keel_max_steps, "KEEL_LIMIT_STEPS", self.keel_limit_steps),
            (
                "KEEL_MAX_REVISIONS",
                self.keel_max_revisions,
                "KEEL_LIMIT_REVISIONS",
                self.keel_limit_revisions,
            ),
            (
                "KEEL_MAX_TOOL_CALLS",
                self.keel_max_tool_calls,
                "KEEL_LIMIT_TOOL_CALLS",
                self.keel_limit_tool_calls,
            ),
            ("KEEL_RETRIEVE_K", self.keel_retrieve_k, "KEEL_LIMIT_RETRIEVE_K", self.keel_limit_retrieve_k),
        ]
        for name, value, ceiling_name, ceiling in pairs:
            if value > ceiling:
                raise ValueError(f"{name}={value} is above its ceiling {ceiling_name}={ceiling}")
        if self.keel_max_steps + 10 > self.keel_limit_recursion:
            raise ValueError(
                f"KEEL_LIMIT_RECURSION={self.keel_limit_recursion} must be at least KEEL_MAX_STEPS + 10 "
                f"({self.keel_max_steps + 10}), the recursion limit of a run with the default budget"
            )
        return self

    @property
    def allowed_hosts(self) -> list[str] | None:
        """Host names served in local mode (no API keys); None with API keys (any Host)."""
        if self.api_users:
            return None
        return [
            "localhost",
            "127.0.0.1",
            "::1",
            *(h.strip() for h in self.keel_allowed_hosts.split(",") if h.strip()),
        ]

    @property
    def otel_traces_endpoint(self) -> str | None:
        """Where OTLP/HTTP spans go: `<KEEL_OTEL_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces`, or None."""
        base = (self.keel_otel_endpoint or self.otel_exporter_otlp_endpoint or "").strip().rstrip("/")
        return f"{base}/v1/traces" if base else None

    @property
    def cors_origins(self) -> list[str]:
        """KEEL_CORS_ORIGINS as a list of origin patterns."""
        return [o.strip().rstrip("/") for o in self.keel_cors_origins.split(",") if o.strip()]

    @field_validator("keel_critic_threshold")
    @classmethod
    def _threshold_range(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("KEEL_CRITIC_THRESHOLD must be between 0 and 1")
        return v

    @field_validator("keel_api_keys")
    @classmethod
    def _keys_shape(cls, v: str) -> str:
        for pair in filter(None, (p.strip() for p in v.split(","))):
            key, sep, user = pair.partition(":")
            if not sep or not key or not user:
                raise ValueError("KEEL_API_KEYS must look like 'key1:alice,key2:bob'")
        return v

    @property
    def api_keys(self) -> dict[str, str]:
        """Map of API key to user id."""
        return {k: u.id for k, u in self.api_users.items()}

    @property
    def api_users(self) -> dict[str, User]:
        """Map of API key to the authenticated user (id, roles, tenant)."""
        from server.auth import User

        out: dict[str, User] = {}
        for entry in filter(None, (p.strip() for p in self.keel_api_keys.split(","))):
            key, _, rest = entry.partition(":")
            user, _, rest = rest.partition(":")
            roles, _, tenant = rest.partition(":")
            out[key.strip()] = User(user.strip(), tuple(r for r in roles.split("+") if r), tenant or None)
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
