"""SQLAlchemy table classes: projects, datasets, checkpoints, jobs, analysis results and views."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    # Names are unique per owner ("u<user id>", or "" for a project made without accounts),
    # so nobody learns of another's private project by trying its name.
    __table_args__ = (UniqueConstraint("owner_key", "name", name="uq_projects_owner_key_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_key: Mapped[str] = mapped_column(String(40), default="", server_default="")
    description: Mapped[str] = mapped_column(Text, default="")
    architecture: Mapped[str] = mapped_column(String(100))
    architecture_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    datasets: Mapped[list[Dataset]] = relationship(
        back_populates="project", cascade="all, delete-orphan"
    )
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="project", cascade="all, delete-orphan", order_by="Checkpoint.id"
    )


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(20))  # "builtin" | "upload"
    builtin_name: Mapped[str | None] = mapped_column(String(100))
    # The canonical npz (workers.datasets.save_canonical) of an upload; None for builtins.
    artifact_digest: Mapped[str | None] = mapped_column(String(64))
    # The dataset jobs of the project use; exactly one per project (services keep it so).
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # "builtin" | "npz" | "image_zip" | "csv" | "jsonl" | "parquet": what the upload was.
    format: Mapped[str] = mapped_column(String(20), default="builtin", server_default="builtin")
    filename: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Filled when the dataset is added (builtins from before these columns: on first read).
    kind: Mapped[str | None] = mapped_column(String(20))  # "image" | "tabular" | "text"
    num_train: Mapped[int | None] = mapped_column(Integer)
    num_test: Mapped[int | None] = mapped_column(Integer)
    num_classes: Mapped[int | None] = mapped_column(Integer)
    input_shape: Mapped[list[Any] | None] = mapped_column()
    # Class counts and a few examples (thumbnails or rows): workers.dataset_formats.preview.
    preview: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    project: Mapped[Project] = relationship(back_populates="datasets")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # "dense" | "pruned"
    source: Mapped[str] = mapped_column(String(20))  # "upload" | "trained" | "pruned"
    method: Mapped[str | None] = mapped_column(String(100))
    target_sparsity: Mapped[float | None] = mapped_column(Float)
    measured_sparsity: Mapped[float] = mapped_column(Float, default=0.0)
    # 64-bit: a 7B-parameter model overflows a 32-bit integer on PostgreSQL.
    num_params: Mapped[int] = mapped_column(BigInteger, default=0)
    num_nonzero: Mapped[int] = mapped_column(BigInteger, default=0)
    flops: Mapped[int | None] = mapped_column(BigInteger)
    flops_nonzero: Mapped[int | None] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None] = mapped_column(Float)
    theoretical_speedup: Mapped[float | None] = mapped_column(Float)
    layer_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    format: Mapped[str] = mapped_column(String(40))
    artifact_digest: Mapped[str] = mapped_column(String(64))
    # Hugging Face checkpoints: a zip of config.json and the tokenizer files.
    assets_digest: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    project: Mapped[Project] = relationship(back_populates="checkpoints")

    @staticmethod
    def stat_columns(stats: dict[str, Any]) -> dict[str, Any]:
        """Column values from `prunescope.models.sparsity.sparsity_report` (missing figures
        stay NULL)."""
        return dict(
            measured_sparsity=float(stats.get("sparsity", 0.0)),
            num_params=int(stats.get("num_params", 0)),
            num_nonzero=int(stats.get("num_nonzero", 0)),
            flops=stats.get("flops"),
            flops_nonzero=stats.get("flops_nonzero"),
            compression_ratio=stats.get("compression_ratio"),
            theoretical_speedup=stats.get("theoretical_speedup"),
            layer_stats=stats.get("layers", {}),
        )


JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    depends_on: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    # Why it failed, in a word (JobInputError.code: "invalid", "too_large", "conflict"), so an
    # upload's validation job answers the same status code the upload request used to.
    error_code: Mapped[str | None] = mapped_column(String(40))
    result_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class AnalysisResult(Base):
    __tablename__ = "analysis_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(40))
    artifact_digest: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ViewState(Base):
    """A long piece of view state (an encoded selection) that a link names by a short id."""

    __tablename__ = "view_states"

    # URL-safe random text (server.services.views), so ids cannot be enumerated.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # SHA-256 of the text: the same text keeps the same id.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Bookmark(Base):
    """A named view of a project: a dashboard path and query inside that project."""

    __tablename__ = "bookmarks"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# ---------------------------------------------------------------- accounts (server/auth.py)


class User(Base):
    """An account; the password is kept only as an scrypt hash with its own salt."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # "scrypt$n$r$p$salt_hex$hash_hex", or None for a token-only account.
    password_hash: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token for the API and CLI; only the SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class UserSession(Base):
    """A signed-in browser; the cookie holds a random id, the table its SHA-256."""

    __tablename__ = "user_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


PROJECT_ROLES = ("viewer", "editor", "owner")


class ProjectMember(Base):
    """A user's role in a project (server/auth.py): "viewer" reads, "editor" also changes
    it, "owner" (one per project, its creator) also manages members and share links.
    A project without an owner row was made without accounts: only the local user (CLI) sees
    it until `prunescope projects owner` gives it one."""

    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ShareLink(Base):
    """A read-only link to one project (or one view of it) for people without an account.
    Only the SHA-256 of its token is stored; revoking it ends access with the next request."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The one view (path and query) it opens; None: every page of the project.
    view_path: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class LoginFailure(Base):
    """One failed sign-in, under the SHA-256 of "u:<user name>" and of "c:<client address>".
    In the database, so every server process counts the same failures."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True, default=utcnow)
