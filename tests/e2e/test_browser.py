"""What a person does in the Airflow UI, in headless Chromium: trigger the example DAG, add a connection.

The REST test proves the pipeline; this one proves the parts only a browser sees: the DAG's params
render as a trigger form with a job id field, the provider's declarative connection form shows
Zoho's fields under Zoho's labels, and a run triggered from the form succeeds. Each step leaves a
screenshot in ``test-output/browser/``; the trigger form's is copied to ``docs/screenshots/`` for
the README.

Chromium is Debian's package, driven by playwright through ``executable_path`` (``playwright
install`` downloads a browser and cannot work without network); ``scripts/bootstrap.sh test``
installs it. Playwright gives every launch a fresh, empty profile directory.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.sandbox import sample_leads_csv
from tests.fixtures.running_airflow import JOB_STEP_SECONDS, REPO, TEST_OUTPUT, RunningAirflow

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

pytestmark = [pytest.mark.airflow_e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
SCREENSHOTS = TEST_OUTPUT / "browser"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
DAG_ID = "zoho_bulk_write_result"
#: The UI is a single-page app that renders after several API calls; on a busy 2-core machine a
#: step can take many seconds, so locators wait this long (milliseconds) before failing.
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 180_000
ROWS = 120


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, or a skip saying how to get it."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: run scripts/bootstrap.sh test (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra's playwright is not installed")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sync_api.expect.set_options(timeout=UI_TIMEOUT_MS)  # assertions keep their own default (5 s)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, running_airflow: RunningAirflow) -> Iterator[Page]:
    """A signed-in page in a fresh browser context (no cookies shared between tests)."""
    context = browser.new_context(base_url=running_airflow.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.goto("/")
    page.get_by_label("Username").fill(running_airflow.username)
    page.get_by_label("Password").fill(running_airflow.password)
    snap(page, "01-login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
    yield page
    context.close()


def snap(page: Page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def open_dialog(page: Page, button: Locator, attempts: int = 3) -> Locator:
    """Click ``button`` until a dialog shows: a click that lands while the page is still hydrating
    (or re-rendering on auto-refresh) is silently lost, and it is the page's fault, not the test's."""
    from playwright.sync_api import expect

    dialog = page.get_by_role("dialog")
    for attempt in range(1, attempts + 1):
        button.click()
        try:
            expect(dialog).to_be_visible(timeout=10_000)
            return dialog
        except AssertionError:
            if attempt == attempts:
                raise
    return dialog


def test_trigger_form_runs_the_dag(page: Page, running_airflow: RunningAirflow) -> None:
    from playwright.sync_api import expect

    sandbox = running_airflow.sandbox
    job_id = sandbox.create_job_from_csv(sample_leads_csv(ROWS, seed=3))
    sandbox.advance_clock(2 * JOB_STEP_SECONDS)  # this DAG loads without waiting: the job must be done
    assert sandbox.job_details(job_id)["status"] == "COMPLETED"

    page.goto("/dags")
    dag_link = page.get_by_role("link", name=DAG_ID, exact=True)
    expect(dag_link).to_be_visible()
    snap(page, "02-dags")
    dag_link.click()
    # Trigger from the DAG's own page: the list page re-renders its cards (and a form opened from
    # one) on every auto-refresh.
    expect(page).to_have_url(re.compile(f"/dags/{DAG_ID}$"))
    expect(page.get_by_role("heading", name=DAG_ID)).to_be_visible()
    form = open_dialog(page, page.get_by_role("button", name="Trigger Dag"))
    # The form is generated from the DAG's params: one input per param, named element_<param>.
    job_field = form.locator("input[name=element_job_id]")
    expect(form.get_by_text("Bulk Write job id")).to_be_visible()
    expect(form.locator("input[name=element_destination]")).to_have_value(f"file://{running_airflow.output_dir}")
    job_field.fill(job_id)
    expect(job_field).to_have_value(job_id)
    shutil.copyfile(snap(page, "03-trigger-form"), DOCS_SCREENSHOTS / "trigger-form.png")

    form.get_by_role("button", name="Trigger").click()
    expect(form).to_have_count(0)  # the form closes once the API accepted the run
    # The UI sometimes opens the new run and sometimes stays on the DAG page: find the run by its
    # conf through the API, then watch it in the UI.
    run_id = running_airflow.wait_for(
        f"a {DAG_ID} run for job {job_id}",
        lambda: next((run["dag_run_id"] for run in running_airflow.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
                      if run["conf"].get("job_id") == job_id), None), timeout=30)
    page.goto(f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    # The run header (run id heading, then its state badge) turns from Queued/Running to Success
    # without a reload; task rows have badges of their own, so look only at the header's.
    run_badge = page.get_by_role("heading", name=run_id, exact=True).locator("xpath=..").get_by_test_id("state-badge")
    expect(run_badge).to_have_text("Success", timeout=RUN_TIMEOUT_MS)
    page.reload()  # the task table stops polling when the run ends; a reload shows its final states
    for task_id in ("load_to_files", "load_to_duckdb"):
        task_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=task_id, exact=True))
        expect(task_row.get_by_test_id("state-badge")).to_have_text("Success")
    snap(page, "04-run-succeeded")

    run = running_airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    assert run["state"] == "success", running_airflow.failure_report(DAG_ID, run_id)
    assert run["conf"]["job_id"] == job_id
    written = sorted((running_airflow.output_dir / "bulk_write" / job_id).glob("*.parquet"))
    assert written, f"the run wrote no Parquet under {running_airflow.output_dir}/bulk_write/{job_id}"
    assert sum(pq.ParquetFile(path).metadata.num_rows for path in written) == ROWS


def test_add_connection_form_has_the_zoho_fields(page: Page) -> None:
    from playwright.sync_api import expect

    page.goto("/connections")
    form = open_dialog(page, page.get_by_role("button", name="Add Connection"))
    form.get_by_role("combobox", name="Connection Type").fill("Zoho")
    form.get_by_role("option", name="Zoho CRM", exact=True).click()

    # Standard fields, relabelled by the provider's ui-field-behaviour; host/port/schema hidden.
    expect(form.get_by_text("Client ID", exact=True)).to_be_visible()
    expect(form.get_by_text("Client Secret", exact=True)).to_be_visible()
    expect(form.get_by_placeholder("1000.XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")).to_be_visible()
    for hidden in ("Host", "Port", "Schema", "Login", "Password"):
        expect(form.get_by_text(hidden, exact=True)).to_have_count(0)
    snap(page, "05-connection-standard-fields")

    # The provider's own fields (conn-fields in get_provider_info), with their descriptions.
    form.get_by_role("button", name="Extra Fields", exact=True).click()
    for label in ("Refresh token", "Data centre", "Organization ID (zgid)", "Accounts URL override",
                  "API domain override", "Extra download hosts", "Token cache"):
        expect(form.get_by_text(label, exact=True)).to_be_visible()
    expect(form.get_by_text("tokens only work in the DC that issued them", exact=False)).to_be_visible()
    page.set_viewport_size({"width": 1400, "height": 1500})  # the dialog scrolls inside itself: show it all
    shutil.copyfile(snap(page, "06-connection-zoho-fields"),
                    DOCS_SCREENSHOTS / "connection-form.png")
