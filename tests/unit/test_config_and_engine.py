"""Settings from the environment, and the AWS ways of connecting: an RDS IAM token per physical
connection, or credentials from Secrets Manager (moto), tried against the real local server."""

import json

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import event, text

from metering.config import ConfigurationError, Settings, settings_from_env
from metering.db.engine import build_engine, database_url


def test_contract_variables_are_read():
    s = settings_from_env(
        {
            "DATABASE_URL": "postgresql+pg8000://u:p@h:5432/d",
            "REDIS_URL": "redis://r:6379/0",
            "METERING_CATALOG": "/x.yaml",
            "STRIPE_WEBHOOK_SECRET": "whsec_x",
            "BILLING_ENABLED": "false",
        }
    )
    assert (s.database_url, s.redis_url, s.metering_catalog, s.stripe_webhook_secret, s.billing_enabled) == (
        "postgresql+pg8000://u:p@h:5432/d",
        "redis://r:6379/0",
        "/x.yaml",
        "whsec_x",
        False,
    )


def test_defaults_and_blank_values():
    s = settings_from_env({"REDIS_URL": "  "})
    assert s.redis_url is None and s.billing_enabled is True and s.database_url is None


@pytest.mark.parametrize(
    ("var", "value"), [("BILLING_ENABLED", "perhaps"), ("DB_PORT", "five"), ("DB_POOL_SIZE", "0")]
)
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(ConfigurationError, match=var):
        settings_from_env({var: value})


def test_no_database_configured_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        database_url(Settings())


def capture_connect_params(engine):
    seen = {}

    @event.listens_for(engine, "do_connect")
    def _capture(dialect, record, cargs, cparams):  # runs after the engine's own listener
        seen.update(cparams)

    return seen


def test_rds_iam_token_is_generated_for_each_new_connection(monkeypatch, tcp_postgres):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    settings = Settings(
        db_host="127.0.0.1",
        db_port=tcp_postgres.port,
        db_name="postgres",
        db_user="postgres",
        db_iam_auth=True,
        db_tls=False,
        aws_region="us-east-1",
    )
    with mock_aws():
        engine = build_engine(settings)
        seen = capture_connect_params(engine)
        with engine.connect() as conn:  # the server trusts any password
            assert conn.execute(text("SELECT 1")).scalar() == 1
        first = seen["password"]
        engine.dispose()
        with engine.connect():
            pass
    assert first.startswith(f"127.0.0.1:{tcp_postgres.port}/?Action=connect&DBUser=postgres")
    assert "X-Amz-Signature=" in first and seen["user"] == "postgres"


def test_credentials_from_secrets_manager(tcp_postgres):
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    with mock_aws():
        arn = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="metering/db", SecretString=json.dumps({"username": "postgres", "password": "s3cret"})
        )["ARN"]
        settings = Settings(
            db_host="127.0.0.1",
            db_port=tcp_postgres.port,
            db_name="postgres",
            db_user="ignored",
            db_secret_arn=arn,
            db_tls=False,
        )
        engine = build_engine(settings)
        seen = capture_connect_params(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == "postgres"
        engine.dispose()
    parameters.clear_caches()
    assert (seen["user"], seen["password"]) == ("postgres", "s3cret")


def test_tls_is_on_for_aws_connections():
    engine = build_engine(Settings(db_host="proxy.example.com", db_iam_auth=True))
    seen = {}

    @event.listens_for(engine, "do_connect")
    def _stop(dialect, record, cargs, cparams):
        seen.update(cparams)
        raise RuntimeError("stop before the network")

    with pytest.raises(Exception, match="stop before the network"), mock_aws():
        engine.connect()
    assert seen["ssl_context"] is not None and seen["host"] == "proxy.example.com"
