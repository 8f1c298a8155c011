"""End-to-end tests against a real, running Airflow (see ``tests/fixtures/running_airflow.py``)."""
