"""The bench's round-trip counter (bench/wire.py) against a real PostgreSQL and Redis: it must count
the service's own driver, whose answers are read without pg8000's `_read`; a counter that misses a
read path would report 0 round trips per check and pass the check's target without measuring it."""

from bench import wire


def test_the_calibration_counts_both_drivers_and_redis(services):
    try:
        counted = wire.calibrate(services["database_url"], services["redis_url"])
    finally:
        wire.uninstall()
    assert counted == {
        "pg: SELECT 1 (autocommit, simple query)": 1,
        "pg: BEGIN; SELECT 1; COMMIT (3 simple queries)": 3,
        "pg: SELECT :x with a parameter (pg8000 unnamed extended query)": 3,
        "pg: two statements in one pipeline (the service's driver)": 1,
        "pg: BEGIN + queued + statement; COMMIT (the service's transaction)": 2,
        "redis: PING": 1,
        "redis: pipeline of 3 GETs": 1,
    }
