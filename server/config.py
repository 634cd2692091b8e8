"""PruneScope settings, read from `PRUNESCOPE_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNESCOPE_", extra="ignore")

    data_dir: Path = Field(default=Path(".prunescope"), description="All state lives here.")
    database_url: str | None = Field(
        default=None, description="Any SQLAlchemy URL; default: SQLite in the data directory."
    )
    executor: str = Field(
        default="local",
        description="'local' (worker processes spawned by serve) or 'ray' (each job a Ray task; "
        "RAY_ADDRESS names the cluster, none starts a local one).",
    )
    # GPUs a Ray task asks for, per job kind ("default" for the rest); fractions share a GPU,
    # e.g. PRUNESCOPE_RAY_NUM_GPUS='{"analyze": 0.5, "prune": 0.25, "default": 0}'. A kind
    # named by neither asks for the share its declaration gives (server/ray_executor.py).
    ray_num_gpus: dict[str, float] = Field(default_factory=dict)
    ray_num_cpus: float = Field(default=1.0, gt=0, description="CPUs a Ray task asks for.")
    # Artifacts: None keeps them under data_dir/artifacts. A local path, or an fsspec URL
    # (s3://bucket/prefix through s3fs; MinIO with AWS_ENDPOINT_URL) that every machine
    # reaches; a URL's files are cached under data_dir/artifacts on each machine that reads
    # them.
    storage_url: str | None = Field(default=None)
    workers: int = Field(default=1, ge=0, description="Local worker processes started by serve.")
    ingest_workers: int = Field(
        default=1, ge=0,
        description="Local worker processes that serve only upload validation (ingest jobs), so "
        "an upload is checked at once while other workers run long analyses; started by serve "
        "beside PRUNESCOPE_WORKERS when that is not 0.")
    ingest_wait_seconds: float = Field(
        default=600.0, gt=0, le=86400,
        description="How long an upload with ?wait=true waits for its validation before it "
        "answers 202 with the job to poll.")
    # Python runs one request at a time per process (the GIL): more processes serve more users
    # at once. Each is a whole app; all state is in the database and the store.
    server_processes: int = Field(default=1, ge=1, description="HTTP server processes.")
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Counted from a project's architecture configuration, never by building the model, so a
    # configuration asking for a huge network is refused before any worker allocates it.
    max_model_parameters: int = Field(
        default=2_000_000_000, gt=0,
        description="The most parameters a project's model may have (huggingface: estimated "
        "from config.json's sizes).")
    upload_expiry_seconds: float = Field(
        default=24 * 3600.0, gt=0, description="Unfinished uploads idle this long are removed."
    )
    # A chunk request that receives nothing for this long is ended, keeping what arrived, so a
    # client that vanished without closing its connection cannot hold the upload's lock.
    upload_idle_timeout_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # A running job whose heartbeat is older than this is considered orphaned.
    stale_after_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    poll_seconds: float = Field(default=0.5, gt=0)
    torch_threads: int | None = Field(default=None, ge=1)
    log_level: str = Field(default="WARNING", description="Log level of worker processes.")
    # Accounts (server/auth.py). "auto": on once any user exists, or when served beyond
    # loopback without --insecure; "off" is the single-user mode of a local install.
    auth: Literal["auto", "on", "off"] = Field(default="auto")
    host: str = Field(default="127.0.0.1", description="The address serve binds to.")
    insecure: bool = Field(
        default=False, description="Serve beyond loopback without accounts (set by --insecure)."
    )
    # What each request may name and send (server/request_guards.py).
    allowed_hosts: str = Field(
        default="",
        description="Host names this server answers to besides loopback's, the address it "
        "binds and any IP address (comma-separated; '*' for any). A request naming another is "
        "refused (400): a page of another site whose name was made to resolve to this machine "
        "(DNS rebinding) names its own.")
    frame_ancestors: str = Field(
        default="",
        description="Origins besides this server's own that may show its pages in a frame "
        "(space- or comma-separated), e.g. a notebook launcher's 'http://localhost:8888'.")
    max_json_bytes: int = Field(
        default=1024**2, gt=0,
        description="The largest body of a request that is not an upload (JSON, forms, "
        "dashboard callbacks of share-link visitors); larger ones get 413.")
    session_hours: float = Field(default=7 * 24.0, gt=0, description="Sign-in lifetime.")
    login_failures_per_minute: int = Field(default=5, ge=1)

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        if value not in {"local", "ray"}:
            raise ValueError(f"unknown executor {value!r}; supported: 'local', 'ray'")
        return value

    @field_validator("ray_num_gpus")
    @classmethod
    def _gpu_shares(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not v >= 0}
        if bad:
            raise ValueError(f"GPU requests must be 0 or more, got {bad}")
        return value

    def gpus_for(self, kind: str) -> float:
        """GPUs `ray_num_gpus` gives this job kind: its entry, else "default", else 0."""
        return float(self.ray_num_gpus.get(kind, self.ray_num_gpus.get("default", 0.0)))

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def artifacts_dir(self) -> Path:
        return self.resolved_data_dir / "artifacts"

    @property
    def uploads_dir(self) -> Path:
        # Inside the artifact root, so a finished upload enters the store by a rename.
        return self.artifacts_dir / "uploads"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'prunescope.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
