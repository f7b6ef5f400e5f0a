"""Typed settings, loaded once: built-in defaults < TOML config file < environment (``CAD_NODE_*``).

The environment names are part of the node's interface (ops scripts use them), so they are fixed:
``CAD_NODE_AE_TITLE``, ``CAD_NODE_HOST``, ``CAD_NODE_PORT``, ``CAD_NODE_DATA_DIR``,
``CAD_NODE_DATABASE_URL``, ``CAD_NODE_BROKER_URL``, ``CAD_NODE_STUDY_QUIET_SECONDS``,
``CAD_NODE_ALLOWED_CALLING_AES``, ``CAD_NODE_DESTINATIONS``, ``CAD_NODE_DEVICE`` and the rest below.
Pure modules receive a :class:`Settings`; only the CLI calls :func:`load_settings`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from cad_node.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config/cad-node.toml")
"""Read when no ``--config`` is given and the file exists (relative to the working directory)."""


def _empty_is_none(value: Any) -> Any:
    """An empty path setting (``CAD_NODE_TLS_CA=""``, ``tls_ca = ""``) means none."""
    return None if isinstance(value, str) and not value.strip() else value


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 16 or "\\" in value or not value.isprintable():
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return value


class Destination(BaseModel):
    """A DICOM peer that receives our results by C-STORE, over TLS when ``tls`` is set."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    tls_ca: Path | None = Field(default=None, description="PEM CA bundle; none: the system's")
    tls_cert: Path | None = Field(default=None, description="our client certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="its private key; none: in tls_cert")
    tls_verify: bool = Field(default=True, description="check the peer's certificate chain")
    tls_check_hostname: bool = Field(default=True, description="the certificate must name host")

    _check = field_validator("ae_title")(_check_ae_title)
    _paths = field_validator("tls_ca", "tls_cert", "tls_key", mode="before")(_empty_is_none)

    @model_validator(mode="after")
    def _check_tls(self) -> Destination:
        given = [
            name for name in ("tls_ca", "tls_cert", "tls_key") if getattr(self, name) is not None
        ]
        if given and not self.tls:
            raise ValueError(f"{', '.join(given)} given for {self} but tls is not true")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError(f"tls_key given for {self} without tls_cert")
        return self

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class AllowedCallingAE(BaseModel):
    """A calling AE title the SCP accepts, optionally only from one host or network.

    Written ``AE`` or ``AE@HOST``: HOST is an IP address, a network (``10.1.0.0/16``) or a host
    name (resolved for each association).
    """

    ae_title: str
    host: str | None = None

    _check = field_validator("ae_title")(_check_ae_title)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value or any(c.isspace() or c in ",@" for c in value):
            raise ValueError(f"invalid host or network {value!r}")
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"invalid network {value!r}: {exc}") from None
        return value

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The host as a network (one address: /32 or /128); None for a host name."""
        if self.host is None:
            return None
        try:
            return ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.ae_title if self.host is None else f"{self.ae_title}@{self.host}"


def _parse_calling_ae(value: Any) -> Any:
    if isinstance(value, str):
        title, at, host = value.partition("@")
        return {"ae_title": title, "host": host if at else None}
    return value


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
    allowed_calling_aes: Annotated[list[AllowedCallingAE], NoDecode] = Field(
        default_factory=list, description="AE or AE@host-or-network; empty: any"
    )
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
    slow_store_seconds: float = Field(
        default=5.0, gt=0, description="a C-STORE taking longer logs one warning with its phases"
    )
    atna_url: str = Field(
        default="",
        description="IHE ATNA audit repository: syslog+tls://HOST:6514 or syslog+udp://HOST:514;"
        " empty: no audit messages",
    )
    atna_ca: Path | None = Field(default=None, description="CA bundle that signed the repository")
    atna_cert: Path | None = Field(default=None, description="our TLS client certificate (PEM)")
    atna_key: Path | None = Field(default=None, description="its private key (PEM)")
    atna_site_id: str = Field(default="", description="AuditEnterpriseSiteID; empty: omitted")
    atna_max_attempts: int = Field(
        default=5, ge=1, description="sends of one audit message before it is dropped"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_host: str = Field(default="127.0.0.1", description="ops console: loopback by default")
    http_port: int = Field(default=8080, ge=0, le=65535, description="0: no web server")
    http_token: SecretStr = Field(
        default=SecretStr(""),
        description="bearer token of the API, or 'sha256:<hex digest>' of it; empty: API closed",
    )
    http_user: str = Field(default="ops", min_length=1, description="ops console login name")
    http_password_hash: SecretStr = Field(
        default=SecretStr(""),
        description="console password as 'pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>' "
        "(cad-node config hash-password); empty: the console takes the API token",
    )
    http_session_hours: float = Field(default=8.0, gt=0, description="console sessions expire")
    http_session_secret: SecretStr = Field(
        default=SecretStr(""),
        description="signs console sessions; empty: a random one per process (logins end "
        "with a restart)",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="where a Celery worker serves /metrics: loopback by default",
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="a Celery worker's Prometheus port (pool process i: this + i); 0: none",
    )
    tls_port: int = Field(
        default=0, ge=0, le=65535, description="DICOM over TLS (2762 is registered); 0: none"
    )
    tls_cert: Path | None = Field(default=None, description="server certificate chain (PEM)")
    tls_key: Path | None = Field(default=None, description="its private key (PEM, unencrypted)")
    tls_ca: Path | None = Field(
        default=None, description="PEM bundle; when set, clients must present a cert it signed"
    )
    tls_only: bool = Field(default=False, description="no plain listener, only the TLS one")

    _check_ae = field_validator("ae_title")(_check_ae_title)
    _paths = field_validator("tls_cert", "tls_key", "tls_ca", mode="before")(_empty_is_none)

    @field_validator("atna_url")
    @classmethod
    def _check_atna_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            # Imported here: the ATNA module reads DICOM, which settings alone must not load.
            from cad_node.atna import Destination as AtnaDestination

            try:
                AtnaDestination.parse(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [_parse_calling_ae(part) for part in value]
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if self.tls_port and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("CAD_NODE_TLS_PORT needs CAD_NODE_TLS_CERT and CAD_NODE_TLS_KEY")
        if self.tls_only and not self.tls_port:
            raise ValueError("CAD_NODE_TLS_ONLY needs CAD_NODE_TLS_PORT")
        if self.tls_port and not self.tls_only and self.tls_port == self.port:
            raise ValueError("CAD_NODE_TLS_PORT must differ from CAD_NODE_PORT")
        return self

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
