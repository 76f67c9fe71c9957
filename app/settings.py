"""One frozen settings object, read through ``pydantic-settings`` from the environment (prefix ``LP_``)
and a ``.env`` file.

Names and defaults are those of ``docs/interface.md``. :meth:`Settings.from_env` refuses an
unknown ``LP_`` name (suggesting the closest valid one) and raises :class:`app.errors.ConfigError` with a
one-line reason naming the variable for every bad value; the CLI turns it into exit status 2. Secret
values are kept as :class:`pydantic.SecretStr` and never appear in a message.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import Field, PlainValidator, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from app.checks import CHECK_IDS as CHECK_IDS  # re-exported: the valid ids come from the registry
from app.checks import REGISTRY
from app.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
_NAMED_ADDRESS = re.compile(r"[^<>\",;@]*<(?P<address>[^<>]+)>")
ENV_PREFIX = "LP_"
MIN_ADMIN_TOKEN = 16


def parse_duration(text: str) -> float:
    """``"6h"`` → 21600.0; plain numbers are seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration (use e.g. 30s, 15m, 6h, 1d): {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_fraction(text: str) -> float:
    """``"10%"`` → 0.1; a plain number from 0 to 1 is taken as the fraction itself."""
    match = _PERCENT.match(text)
    if match:
        return float(match.group(1)) / 100
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a percentage (use e.g. 10%): {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"not a percentage (use e.g. 10%, or a fraction from 0 to 1): {text!r}")
    return value


def _csv(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def check_url(value: str, schemes: tuple[str, ...]) -> None:
    """Raise ValueError unless ``value`` is a URL of one of ``schemes`` with a host.

    The message never repeats the value: some of these URLs carry a secret (Slack path, SMTP password).
    """
    if _CONTROL.search(value) or any(c.isspace() for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError("not a URL with a valid host and port") from None
    wanted = " or ".join(f"{s}://" for s in schemes)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"must be a URL starting with {wanted}, with a host")
    if not parts.hostname:
        raise ValueError(f"must be a URL starting with {wanted}, with a host (none given)")


class PostgresURL(str):
    """``LP_DATABASE=postgresql://user:password@host:port/name``: the value is the URL (what the
    driver is given); its ``repr`` and :meth:`redacted` hide the password."""

    __slots__ = ()

    def redacted(self) -> str:
        parts = urlsplit(self)
        if parts.password is None:
            return str(self)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()

    def __repr__(self) -> str:
        return f"PostgresURL({self.redacted()!r})"

    @property
    def password(self) -> str | None:
        return urlsplit(self).password


def parse_database(value: Any) -> Path | PostgresURL:
    """``LP_DATABASE``: an SQLite file's path, or a ``postgresql://`` URL (never repeated in a message)."""
    if isinstance(value, Path | PostgresURL):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be an SQLite file's path or a postgresql:// URL")
    if "://" not in value:
        return Path(value)
    if _CONTROL.search(value) or any(c.isspace() for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError("not a URL with a valid host and port") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError("a URL must start with postgresql:// (or give an SQLite file's path)")
    if not parts.path.strip("/"):
        raise ValueError("a postgresql:// URL must name the database (postgresql://user@host:5432/name)")
    return PostgresURL(value)


def check_address(value: str) -> str:
    """One e-mail address, bare (``a@example.com``) or with a display name (``Ops <a@example.com>``)."""
    if _CONTROL.search(value):
        raise ValueError(f"contains a control character (CR, LF, …): {value!r}")
    text = value.strip()
    named = _NAMED_ADDRESS.fullmatch(text)
    address = named.group("address").strip() if named else text
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"not an email address: {text!r}")
    return text


_environ: ContextVar[Mapping[str, str] | None] = ContextVar("lp_settings_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ`` (tests, the demo)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._mapping = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._mapping.items() if v != "" or not self.env_ignore_empty}


class _KnownNamesOnly(PydanticBaseSettingsSource):
    """A ``.env`` file may hold other programs' variables: keep only this model's fields from it.

    (With ``extra="forbid"``, pydantic-settings would otherwise pass them on as extra inputs.
    Unknown ``LP_`` names in the file are refused by :meth:`Settings.from_env` before this.)
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._inner().items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Every setting of the product. Construct with :meth:`from_env`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # an empty value means "not set"
        extra="forbid",
        frozen=True,
    )

    database: Annotated[Path | PostgresURL, PlainValidator(parse_database)] = Path("data/lowerplane.sqlite3")
    # Evidence files: beside the SQLite file by default; with PostgreSQL ``data`` (shared storage
    # when several instances run). An addition beyond docs/interface.md.
    data_dir: Path | None = None
    bitbucket_api_url: str = "https://api.bitbucket.org/2.0"
    bitbucket_url: str = "https://bitbucket.org"
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    bitbucket_token: SecretStr | None = None
    workspaces: Annotated[tuple[str, ...], NoDecode] = ()
    public_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    slack_webhook_url: SecretStr | None = None
    smtp_url: SecretStr | None = None
    alert_email_from: str | None = None
    alert_email_to: Annotated[tuple[str, ...], NoDecode] = ()
    reconcile_interval: float = 6 * 3600.0
    checks_enabled: Annotated[tuple[str, ...], NoDecode] = ()
    checks_disabled: Annotated[tuple[str, ...], NoDecode] = ()
    min_approvals: int = Field(default=1, ge=1, le=100)
    strict_merge_checks: bool = False
    evidence_max_age_days: int = Field(default=90, ge=1, le=3650)
    evidence_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    budget_per_hour: int = Field(default=1000, ge=10, le=100_000)
    # Wave 2 names of docs/interface.md (fractions: "10%" is 0.1).
    budget_headroom: float = 0.10
    webhook_budget_share: float = 0.30
    repos_tier_interval: float = 5 * 60.0
    smtp_allow_plaintext: bool = False
    # Additions beyond docs/interface.md (documented in the README).
    concurrency: int = Field(default=8, ge=1, le=64)
    event_retention_days: int = Field(default=30, ge=1, le=3650)
    log_level: str = "info"
    alert_group_wait: float = 30.0
    alert_group_interval: float = 300.0
    alert_digest_interval: float = 86400.0
    # For local receivers in tests and the demo only: accept a Slack URL other than hooks.slack.com.
    slack_allow_insecure_url: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment (or the mapping given to :meth:`from_env`), then ``.env``."""
        environ = _environ.get()
        env = env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
        return (init_settings, env, _KnownNamesOnly(settings_cls, dotenv_settings))

    @field_validator("workspaces", "checks_enabled", "checks_disabled", mode="before")
    @classmethod
    def _split(cls, value: Any) -> tuple[str, ...]:
        return _csv(value)

    @field_validator("alert_email_to", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str) and _CONTROL.search(value):
            raise ValueError(f"contains a control character (CR, LF, …): {value!r}")
        return tuple(check_address(v) for v in _csv(value))

    @field_validator("alert_email_from")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)

    @field_validator("checks_enabled", "checks_disabled")
    @classmethod
    def _known_checks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in CHECK_IDS]
        if unknown:
            raise ValueError(f"unknown test id {unknown[0]!r} (known: {', '.join(CHECK_IDS)})")
        return value

    @field_validator("reconcile_interval", "repos_tier_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
        if seconds < 60:
            raise ValueError("must be at least 1m")
        return seconds

    @field_validator("alert_group_wait", "alert_group_interval", "alert_digest_interval", mode="before")
    @classmethod
    def _short_duration(cls, value: Any) -> float:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
        if seconds < 0:
            raise ValueError("must not be negative")
        return seconds

    @field_validator("budget_headroom", "webhook_budget_share", mode="before")
    @classmethod
    def _fraction(cls, value: Any, info: ValidationInfo) -> float:
        fraction = parse_fraction(value) if isinstance(value, str) else float(value)
        most = 0.9 if info.field_name == "budget_headroom" else 1.0
        if not 0 <= fraction <= most:
            raise ValueError(f"must be from 0% to {most:.0%}")
        return fraction

    @field_validator("bitbucket_api_url", "bitbucket_url", "public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_url(value, ("http", "https"))
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:password@)")
        return value.rstrip("/")

    @field_validator("slack_webhook_url")
    @classmethod
    def _slack_http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_url(value.get_secret_value(), ("http", "https"))
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_url(value.get_secret_value(), ("smtp", "smtps"))
        return value

    @field_validator("bitbucket_token", "oauth_client_id", "oauth_client_secret", "admin_token")
    @classmethod
    def _credential(cls, value: SecretStr | str | None) -> SecretStr | str | None:
        """A credential goes into an HTTP header or a form as it is: a line break, control character
        or space (a pasted value, a CRLF .env) is refused here rather than failing every request."""
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        if plain is not None and (_CONTROL.search(plain) or any(c.isspace() for c in plain)):
            raise ValueError("must not contain spaces or control characters")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_TOKEN:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN} characters")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from app.crypto import Crypto

            try:
                Crypto(value.get_secret_value())  # the rule of app.crypto: Fernet keys or ≥ 16 characters
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("LP_SECRET_KEY").lstrip(": ")) from None
        return value

    @model_validator(mode="after")
    def _slack_url(self) -> Settings:
        if self.slack_webhook_url is not None and not self.slack_allow_insecure_url:
            from app.notify.render import validate_slack_url

            try:
                validate_slack_url(self.slack_webhook_url.get_secret_value())
            except ConfigError as exc:
                raise ValueError(f"LP_SLACK_WEBHOOK_URL: {exc}") from None
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @property
    def files_dir(self) -> Path:
        """Where evidence files are kept (``LP_DATA_DIR``, else beside the SQLite file, else ``data``)."""
        if self.data_dir is not None:
            return self.data_dir
        return self.database.parent if isinstance(self.database, Path) else Path("data")

    @property
    def enabled_checks(self) -> tuple[str, ...]:
        """Test ids in effect: those on by default and those switched on, minus those switched off."""
        on = {c.id for c in REGISTRY.values() if c.default_on} | set(self.checks_enabled)
        return tuple(c for c in CHECK_IDS if c in on and c not in self.checks_disabled)

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds (for log redaction)."""
        out = []
        if isinstance(self.database, PostgresURL) and self.database.password:
            out.append(self.database.password)
        for value in (
            self.oauth_client_secret,
            self.bitbucket_token,
            self.secret_key,
            self.admin_token,
            self.slack_webhook_url,
            self.smtp_url,
        ):
            if value is not None:
                out.append(value.get_secret_value())
        return out

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every valid variable name, ``LP_DATABASE`` …"""
        return tuple(ENV_PREFIX + name.upper() for name in cls.model_fields)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")) -> Settings:
        """Read ``LP_*`` variables (the environment wins over ``.env``); raise ConfigError.

        ``environ`` replaces ``os.environ`` when given; ``env_file=None`` reads no file.
        """
        source = os.environ if environ is None else environ
        if env_file is not None and env_file.is_file():
            _check_env_file(env_file, cls.names())
        else:
            env_file = None
        _refuse_unknown(source, cls.names(), "")
        try:
            with _reading(source):
                return cls(_env_file=env_file)
        except ValidationError as exc:
            first = exc.errors()[0]
            msg = str(first["msg"]).removeprefix("Value error, ")
            if not first["loc"]:  # a rule across fields names its variable itself
                raise ConfigError(msg) from None
            raise ConfigError(f"{ENV_PREFIX}{str(first['loc'][0]).upper()}: {msg}") from None
        except SettingsError as exc:  # pragma: no cover - no field is decoded as JSON (NoDecode)
            raise ConfigError(str(exc).splitlines()[0]) from None


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _environ.set(environ)
    try:
        yield
    finally:
        _environ.reset(token)


def _refuse_unknown(names: Mapping[str, str | None] | list[str], valid: tuple[str, ...], where: str) -> None:
    for name in names:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid:
            continue
        close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see the configuration table in README.md"
        raise ConfigError(f"{where}{name}: unknown setting; {hint}")


def _check_env_file(path: Path, valid: tuple[str, ...]) -> None:
    """Every line of ``.env`` must be ``NAME=value`` (python-dotenv syntax); every ``LP_`` name known."""
    try:
        with path.open(encoding="utf-8") as stream:
            bindings = list(parse_stream(stream))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    keys: list[str] = []
    for binding in bindings:
        line = binding.original.line
        if binding.error or (binding.key is not None and binding.value is None):
            raise ConfigError(f"{path}:{line}: expected NAME=value")
        if binding.key is not None:
            keys.append(binding.key)
    _refuse_unknown(keys, valid, f"{path}: ")
