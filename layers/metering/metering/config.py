"""Settings from the environment (api.md section 2), validated once per container.

Read through `get_settings()`; tests that change the environment call `get_settings.cache_clear()`.
pydantic-settings would cost ~125 ms of import, so the environment is mapped by hand here.
"""

import os
from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and value.strip() == "" else value


Opt = Annotated[str | None, BeforeValidator(_blank_is_none)]


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed: a start-up error that names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    # contract (api.md section 2)
    database_url: Opt = None
    redis_url: Opt = None
    metering_catalog: Opt = None
    stripe_webhook_secret: Opt = None
    billing_enabled: bool = True
    alert_event_bus: Opt = None  # usage alerts (section 7): EventBridge bus name
    alert_webhook_url: Opt = None
    alert_webhook_secret: Opt = None  # whsec_ + base64 (Standard Webhooks)
    # api.md section 7: how far back `occurred_at` may lie
    late_event_grace_seconds: int = Field(default=86400, ge=0, le=400 * 86400)

    # AWS deployment: RDS Proxy with IAM auth, or a Secrets Manager secret with username/password
    db_host: Opt = None
    db_port: int = 5432
    db_name: str = "metering"
    db_user: str = "metering"
    db_iam_auth: bool = False
    db_secret_arn: Opt = None
    db_tls: bool = True
    aws_region: Opt = None
    stripe_webhook_secret_arn: Opt = None
    usage_dlq_url: Opt = None
    alert_webhook_secret_arn: Opt = None
    alert_webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    alert_max_attempts: int = Field(default=12, ge=1, le=100)

    # connection behaviour
    db_pool_size: int = Field(default=1, ge=1, le=64)
    db_timeout_s: float = Field(default=20.0, gt=0)
    db_ping_after_idle_s: float = Field(default=30.0, ge=0)
    redis_timeout_s: float = Field(default=0.25, gt=0)


# environment variable -> Settings field (the contract's names, then ours)
ENV = {
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "METERING_CATALOG": "metering_catalog",
    "STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
    "BILLING_ENABLED": "billing_enabled",
    "ALERT_EVENT_BUS": "alert_event_bus",
    "ALERT_WEBHOOK_URL": "alert_webhook_url",
    "ALERT_WEBHOOK_SECRET": "alert_webhook_secret",
    "LATE_EVENT_GRACE_SECONDS": "late_event_grace_seconds",
    "DB_HOST": "db_host",
    "DB_PORT": "db_port",
    "DB_NAME": "db_name",
    "DB_USER": "db_user",
    "DB_IAM_AUTH": "db_iam_auth",
    "DB_SECRET_ARN": "db_secret_arn",
    "DB_TLS": "db_tls",
    "AWS_REGION": "aws_region",
    "STRIPE_WEBHOOK_SECRET_ARN": "stripe_webhook_secret_arn",
    "USAGE_DLQ_URL": "usage_dlq_url",
    "ALERT_WEBHOOK_SECRET_ARN": "alert_webhook_secret_arn",
    "ALERT_WEBHOOK_TIMEOUT_S": "alert_webhook_timeout_s",
    "ALERT_MAX_ATTEMPTS": "alert_max_attempts",
    "DB_POOL_SIZE": "db_pool_size",
    "DB_TIMEOUT_S": "db_timeout_s",
    "DB_PING_AFTER_IDLE_S": "db_ping_after_idle_s",
    "REDIS_TIMEOUT_S": "redis_timeout_s",
}


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    raw = {field: env[var] for var, field in ENV.items() if var in env}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        field_to_var = {field: var for var, field in ENV.items()}
        problems = "; ".join(
            f"{field_to_var.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return settings_from_env()
