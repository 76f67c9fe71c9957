"""One frozen settings object, read from the environment (prefix ``LP_``) and a ``.env`` file once.

Names and defaults are those of ``../shared/docs/interface.md``. A bad value raises
:class:`app.errors.ConfigError` with a one-line reason naming the variable; the CLI turns it into
exit status 2. Secret values are kept as :class:`pydantic.SecretStr` so they never print.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from app.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

CHECK_IDS = (
    "repo-classified",
    "member-mfa-enabled",
    "workspace-mfa-enforced",
    "merge-requires-passing-builds",
    "merge-requires-peer-review",
    "branch-protection-enforced",
    "offboarded-access-removed",
    "pipelines-enabled",
)


def parse_duration(text: str) -> float:
    """``"6h"`` → 21600.0; plain numbers are seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration (use e.g. 30s, 15m, 6h, 1d): {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _csv(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


class Settings(BaseModel):
    """Every setting of the product. Construct with :meth:`from_env`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: Path = Path("data/lowerplane.sqlite3")
    bitbucket_api_url: str = "https://api.bitbucket.org/2.0"
    bitbucket_url: str = "https://bitbucket.org"
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    bitbucket_token: SecretStr | None = None
    workspaces: tuple[str, ...] = ()
    public_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    slack_webhook_url: SecretStr | None = None
    smtp_url: SecretStr | None = None
    smtp_allow_plaintext: bool = False  # SMTP credentials without TLS: a local relay only
    alert_email_from: str | None = None
    alert_email_to: tuple[str, ...] = ()
    reconcile_interval: float = 6 * 3600.0
    checks_enabled: tuple[str, ...] = ()
    checks_disabled: tuple[str, ...] = ()
    min_approvals: int = Field(default=1, ge=1, le=100)
    strict_merge_checks: bool = False
    evidence_max_age_days: int = Field(default=90, ge=1, le=3650)
    evidence_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # Additions beyond interface.md (documented in the README).
    budget_per_hour: int = Field(default=1000, ge=10, le=100_000)
    concurrency: int = Field(default=8, ge=1, le=64)
    event_retention_days: int = Field(default=30, ge=1, le=3650)
    log_level: str = "info"
    alert_group_wait: float = 30.0
    alert_group_interval: float = 300.0
    alert_digest_interval: float = 86400.0
    # For local receivers in tests and the demo only: accept a Slack URL other than hooks.slack.com.
    slack_allow_insecure_url: bool = False

    @field_validator("workspaces", "alert_email_to", "checks_enabled", "checks_disabled", mode="before")
    @classmethod
    def _split(cls, value: Any) -> tuple[str, ...]:
        return _csv(value)

    @field_validator("checks_enabled", "checks_disabled")
    @classmethod
    def _known_checks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in CHECK_IDS]
        if unknown:
            raise ValueError(f"unknown test id {unknown[0]!r} (known: {', '.join(CHECK_IDS)})")
        return value

    @field_validator("reconcile_interval", mode="before")
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

    @model_validator(mode="after")
    def _slack_url(self) -> Settings:
        if self.slack_webhook_url is not None and not self.slack_allow_insecure_url:
            from app.notify.render import validate_slack_url

            try:
                validate_slack_url(self.slack_webhook_url.get_secret_value())
            except ConfigError as exc:
                raise ValueError(f"LP_SLACK_WEBHOOK_URL: {exc}") from None
        return self

    @field_validator("bitbucket_api_url", "bitbucket_url", "public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s@]+(/\S*)?$", value):
            raise ValueError(f"not an http(s) URL without credentials: {value!r}")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @property
    def enabled_checks(self) -> tuple[str, ...]:
        """Test ids in effect: all but ``pipelines-enabled`` unless switched on, minus disabled."""
        on = {c for c in CHECK_IDS if c != "pipelines-enabled"} | set(self.checks_enabled)
        return tuple(c for c in CHECK_IDS if c in on and c not in self.checks_disabled)

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds (for log redaction)."""
        out = []
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

    @property
    def data_dir(self) -> Path:
        """Folder beside the database that holds evidence files."""
        return self.database.parent

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")) -> Settings:
        """Read ``LP_*`` variables (the environment wins over ``.env``); raise ConfigError."""
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            values.update(_read_env_file(env_file))
        source = os.environ if environ is None else environ
        values.update({k: v for k, v in source.items() if k.startswith("LP_")})
        fields = cls.model_fields
        data: dict[str, Any] = {}
        for key, raw in values.items():
            name = key[3:].lower()
            if name not in fields:
                continue  # unknown LP_ variables are ignored, as other tools' would be
            if raw == "" and name not in {"database"}:
                continue
            data[name] = raw
        try:
            return cls(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            msg = str(first["msg"]).removeprefix("Value error, ")
            if not first["loc"]:  # a rule across fields names its variable itself
                raise ConfigError(msg) from None
            raise ConfigError(f"LP_{str(first['loc'][0]).upper()}: {msg}") from None


def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        key, _, value = stripped.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out
