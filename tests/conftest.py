"""Shared test set-up. Each server the tests need is started by a fixture module of its own."""

pytest_plugins = [
    "tests.fixtures.zips",
    "tests.fixtures.s3",
    "tests.fixtures.postgres",
    "tests.fixtures.airflow_env",
]
