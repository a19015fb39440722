"""Fixtures of the stack suites, on the module's own `stack` fixture (each suite starts the
stack its tests need): Airflow's REST API, and a browser logged in to the Airflow UI."""

import re

import pytest

from tests.stack.support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DAG_ID, api_client, mlflow_credentials


@pytest.fixture(scope="module")
def airflow_api(stack):
    with api_client(stack["status"]) as client:
        yield client


@pytest.fixture(scope="module")
def page(stack, airflow_api):
    """A logged-in browser page on the Airflow UI."""
    from playwright.sync_api import sync_playwright

    user, password = airflow_api.credentials
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # MLflow's UI asks for basic auth: the browser answers with the stack's MLflow admin
        user_and_password = mlflow_credentials(stack["status"])
        page = browser.new_page(
            viewport={"width": 1400, "height": 1000},
            http_credentials={"username": user_and_password[0], "password": user_and_password[1]},
        )
        page.goto(f"{stack['status']['airflow_url']}/dags/{DAG_ID}")
        page.get_by_label(re.compile("username", re.I)).fill(user)
        page.get_by_label(re.compile("password", re.I)).fill(password)
        page.get_by_role("button", name=re.compile("sign in", re.I)).click()
        page.wait_for_url(re.compile(rf"/dags/{DAG_ID}"))
        try:
            yield page
        finally:
            browser.close()
