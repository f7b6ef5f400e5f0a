"""Typed settings, loaded once: built-in defaults < TOML config file < environment (``CAD_NODE_*``).

The environment names are part of the node's interface (ops scripts use them), so they are fixed:
``CAD_NODE_AE_TITLE``, ``CAD_NODE_HOST``, ``CAD_NODE_PORT``, ``CAD_NODE_DATA_DIR``,
``CAD_NODE_DATABASE_URL``, ``CAD_NODE_BROKER_URL``, ``CAD_NODE_STUDY_QUIET_SECONDS``,
``CAD_NODE_ALLOWED_CALLING_AES``, ``CAD_NODE_DESTINATIONS``, ``CAD_NODE_DEVICE`` and the rest below.
Pure modules receive a :class:`Settings`; only the CLI calls :func:`load_settings`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from cad_node.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config/cad-node.toml")
"""Read when no ``--config`` is given and the file exists (relative to the working directory)."""


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 16 or "\\" in value or not value.isprintable():
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return value


class Destination(BaseModel):
    """A DICOM peer that receives our results by C-STORE."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    _check = field_validator("ae_title")(_check_ae_title)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Settings(BaseSettings):
    """Everything the node can be configured with."""

    model_config = SettingsConfigDict(env_prefix="CAD_NODE_", extra="forbid")

    ae_title: str = "CADNODE"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535, description="0 picks a free port")
    data_dir: Path = Path("var/cad-node")
    database_url: str = Field(default="", description="empty: SQLite file in data_dir")
    broker_url: str = Field(default="", description="empty: embedded in-process queue")
    task_visibility_timeout: float = Field(
        default=900.0,
        gt=0,
        description="a task whose worker died unacknowledged is redelivered after this long",
    )
    study_quiet_seconds: float = Field(default=30.0, gt=0)
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(
        default=0, ge=0, description="CPU threads for inference per process; 0: torch's default"
    )
    model: str = Field(default="", description="model folder; empty: the one models/DEFAULT names")
    delivery_max_attempts: int = Field(
        default=8, ge=1, description="then an alert, and retries at the capped interval"
    )
    delivery_backoff_seconds: float = Field(default=5.0, gt=0)
    delivery_backoff_max_seconds: float = Field(default=600.0, gt=0)
    delivery_timeout_seconds: float = Field(default=30.0, gt=0)
    delivery_sweep_seconds: float = Field(default=5.0, gt=0, description="outbox retry check")
    outbox_retention_days: float = Field(
        default=7.0, gt=0, description="an undelivered object is retried this long, then failed"
    )
    max_pdu: int = Field(default=4 * 1024 * 1024, ge=0, description="0: unlimited")
    max_associations: int = Field(default=16, ge=1)
    max_connections_per_peer: int = Field(
        default=8, ge=1, description="open TCP connections from one address; more are closed"
    )
    acse_timeout_seconds: float = Field(
        default=30.0, gt=0, description="association negotiation; a silent connection is closed"
    )
    dimse_timeout_seconds: float = Field(default=120.0, gt=0, description="waiting for a message")
    network_timeout_seconds: float = Field(
        default=300.0, gt=0, description="an idle association ends; a PDU must arrive within it"
    )
    min_free_mb: int = Field(default=256, ge=0, description="refuse to store below this")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _check_ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [_check_ae_title(str(part)) for part in value]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then values read from the config file (passed as init kwargs).
        return (env_settings, init_settings)

    # Derived locations -------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        """Where acknowledged instances live, one folder per study."""
        return self.data_dir / "spool"

    @property
    def incoming_dir(self) -> Path:
        """Partial transfers; same filesystem as the spool so a rename is atomic."""
        return self.data_dir / "incoming"

    @property
    def outbox_dir(self) -> Path:
        """Result objects waiting for delivery."""
        return self.data_dir / "outbox"

    @property
    def model_path(self) -> Path | None:
        """The configured model folder; None: the one ``models/DEFAULT`` names."""
        return Path(self.model) if self.model else None

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to an SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cad-node.db').resolve()}"


def load_settings(config_file: Path | None = None) -> Settings:
    """Load settings once: defaults, then ``config_file`` (or the default file), then env.

    ``CAD_NODE_CONFIG`` names the config file when ``config_file`` is not given.
    """
    path = config_file
    if path is None and os.environ.get("CAD_NODE_CONFIG"):
        path = Path(os.environ["CAD_NODE_CONFIG"])
    explicit = path is not None
    path = path or DEFAULT_CONFIG_FILE
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
