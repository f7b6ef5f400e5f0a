"""The ops console for real: HTTP on a free loopback port, logins, CSRF, and a headless browser.

The browser is Debian's chromium driven by its own chromedriver (nothing is downloaded); the
browser test skips when they are not installed (``scripts/bootstrap --test`` installs them).
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from factories import four_views
from helpers import IN_CI, wait_for
from model_factory import tiny_model_folder
from receiver import start_receiver
from scu import store
from services import free_port

from cad_node.audit.jobs import JobRepository
from cad_node.web.auth import ConsoleAuth, hash_password, password_matches

TOKEN = "s3cret-console-token"
PATIENT_DATA = ("Test^Synthetic", "SYNTH-001")  # what tests/factories.py puts in every image
PAGES = ("/", "/studies", "/events", "/studies/1.2.3")
SCREENSHOTS = os.environ.get("CAD_TEST_SCREENSHOTS")
"""A folder to copy the screenshots into as well, e.g. ``docs/screenshots`` to refresh the
README's (the test's own copies are in its tmp dir)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """A real HTTP client with a cookie jar; redirects are returned, not followed."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def request(
        self, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode(errors="replace")

    def login(self, user: str = "ops", password: str = TOKEN) -> int:
        return self.request("/login", {"user": user, "password": password, "next": "/"})[0]

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.request("/")[2])
        assert found is not None
        return found.group(1)


def test_passwords_are_hashed_and_sessions_signed_and_expire() -> None:
    from helpers import make_settings

    stored = hash_password("correct horse", iterations=1000)
    assert "correct horse" not in stored and stored.startswith("pbkdf2_sha256$1000$")
    assert password_matches("correct horse", stored)
    assert not password_matches("wrong", stored)
    assert not password_matches("correct horse", "garbage")
    auth = ConsoleAuth(make_settings(Path("/nonexistent"), http_password_hash=stored))
    assert auth.check_login("ops", "correct horse")
    assert not auth.check_login("root", "correct horse")
    assert not auth.check_login("ops", TOKEN)  # with a password set, the token does not log in
    session, cookie = auth.new_session("ops", now=1000.0)
    assert auth.read_session(cookie, now=1001.0) == session
    assert auth.read_session(cookie, now=1000.0 + 8 * 3600) is None  # expired
    payload, signature = cookie.rsplit(".", 1)
    assert auth.read_session(f"{payload}.{'0' * len(signature)}", now=1001.0) is None
    other = ConsoleAuth(make_settings(Path("/nonexistent"), http_password_hash=stored))
    assert other.read_session(cookie, now=1001.0) is None  # another process's secret


def test_every_page_needs_a_login_and_actions_need_the_csrf_token(node_factory: Any) -> None:
    node = node_factory(http_port=free_port(), http_token=TOKEN)
    client = Client(node.web.port)
    for path in (*PAGES, "/studies/1.2.3/objects/1.2.png"):
        status, headers, _ = client.request(path)
        assert status == 303, path
        assert headers["location"] == f"/login?next={urllib.parse.quote(path, safe='')}", path
    status, _, _ = client.request("/actions/resend", {"csrf": "x"})
    assert status == 303  # no session: to the login form, nothing done
    status, _, body = client.request("/login")
    assert status == 200 and 'name="password"' in body
    assert client.login(password="not-the-token") == 401
    assert client.login(user="root") == 401
    assert not list(client.jar)
    events = node.repo.recent_events(10, kind="console.")
    assert [e.kind for e in events] == ["console.login_failed"] * 2
    assert all(TOKEN not in str(e) and "not-the-token" not in str(e) for e in events)

    assert client.login() == 303
    [cookie] = list(client.jar)
    assert cookie.has_nonstandard_attr("HttpOnly")
    status, headers, _ = client.request("/login", {"user": "ops", "password": TOKEN})
    assert "samesite=strict" in headers["set-cookie"].lower()
    for path in PAGES:
        status, headers, body = client.request(path)
        assert status == (404 if path == "/studies/1.2.3" else 200), path
        assert (
            'http-equiv="refresh"' in body
            and "default-src 'none'" in headers["content-security-policy"]
        )
    assert client.request("/actions/resend", {})[0] == 403
    assert client.request("/actions/resend", {"csrf": "forged"})[0] == 403
    assert client.request("/logout", {})[0] == 403
    assert not node.repo.recent_events(10, kind="delivery.requeued")
    status, headers, _ = client.request("/actions/resend", {"csrf": client.csrf()})
    assert (status, headers["location"]) == (303, "/?resent=0")
    [requeued] = node.repo.recent_events(10, kind="delivery.requeued")
    assert requeued.detail == "0 object(s) (all failed) by ops"
    assert client.request("/logout", {"csrf": client.csrf()})[0] == 303
    assert client.request("/")[0] == 303  # the cookie is gone


def test_a_rerun_is_refused_while_the_study_receives_images(node_factory: Any) -> None:
    """The console and the API refuse, with the reason, and nothing is recorded but that."""
    node = node_factory(
        pipeline=True, study_quiet_seconds=600, http_port=free_port(), http_token=TOKEN
    )
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(node.scp.port, views[:1]) == [0]
    client = Client(node.web.port)
    assert client.request("/actions/reanalyse", {"csrf": "x", "study": uid})[0] == 303  # login
    assert client.login() == 303
    page = f"/studies/{urllib.parse.quote(uid, safe='')}"
    assert 'action="/actions/reanalyse"' not in client.request(page)[2]  # no button meanwhile
    assert client.request("/actions/reanalyse", {"csrf": "forged", "study": uid})[0] == 403
    status, headers, _ = client.request("/actions/reanalyse", {"csrf": client.csrf(), "study": uid})
    assert (status, headers["location"]) == (303, f"{page}?refused=receiving")
    body = client.request(headers["location"])[2]
    assert "Not re-analysed: the study is receiving images" in body
    # the API says the same without a body, as `curl -X POST` sends it
    request = urllib.request.Request(
        f"{client.base}/api/v1/studies/{uid}/reanalyse", data=b"", method="POST"
    )
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 409
    assert b"receiving images" in refused.value.read()
    assert node.repo.show_study(uid).revision == 0
    assert JobRepository(node.engine).jobs_of_study(uid) == []


def test_the_login_refuses_everyone_without_a_configured_secret(node_factory: Any) -> None:
    node = node_factory(http_port=free_port())
    client = Client(node.web.port)
    assert "nobody can log in" in client.request("/login")[2]
    assert client.login(password="") == 401


def _browser(download_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={download_dir}")
    # The system's chromedriver, named explicitly: Selenium Manager never downloads one.
    service = Service(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def _screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height), 800), 4000))
    driver.save_screenshot(str(tmp_path / name))
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(SCREENSHOTS) / name)


@pytest.mark.slow
def test_in_a_browser_log_in_see_the_heatmap_and_resend(node_factory: Any, tmp_path: Path) -> None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        message = "chromium/chromedriver not installed (scripts/bootstrap --test installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from selenium.webdriver.common.by import By

    pacs_port = free_port()  # nothing listens there yet: every delivery fails
    node = node_factory(
        pipeline=True,
        model=str(tiny_model_folder(tmp_path / "model")),
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
        http_port=free_port(),
        http_token=TOKEN,
        delivery_backoff_seconds=0.2,
        delivery_backoff_max_seconds=0.5,
        delivery_sweep_seconds=0.3,
        delivery_timeout_seconds=2,
        outbox_retention_days=2 / 86400,  # failed for good after two seconds
    )
    views = four_views()
    uid = views[0].StudyInstanceUID
    assert store(node.scp.port, views) == [0, 0, 0, 0]
    jobs = JobRepository(node.engine)
    [job] = wait_for(
        lambda: [j for j in jobs.jobs_of_study(uid) if j.state == "failed"], timeout=90
    )
    assert {d.state for d in job.deliveries} == {"failed"} and len(job.deliveries) == 6
    pacs = start_receiver("PACS", port=pacs_port)
    base = f"http://127.0.0.1:{node.web.port}"
    driver = _browser(tmp_path / "chromium")
    try:
        driver.get(f"{base}/studies")
        assert driver.current_url.startswith(f"{base}/login?next=")
        _screenshot(driver, tmp_path, "login.png")
        driver.find_element(By.NAME, "user").send_keys("ops")
        driver.find_element(By.NAME, "password").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        # a click returns before the page it leads to has loaded: poll for that page
        wait_for(lambda: driver.current_url == f"{base}/studies", timeout=15)
        assert uid in driver.page_source
        assert '<td class="state-failed">failed</td>' in driver.page_source  # its newest job
        _screenshot(driver, tmp_path, "studies.png")
        driver.get(f"{base}/")
        assert "Deliveries" in driver.page_source and "smoke-test model" in driver.page_source
        _screenshot(driver, tmp_path, "overview.png")
        driver.get(f"{base}/events?level=error")
        assert "delivery.failed" in driver.page_source
        _screenshot(driver, tmp_path, "events.png")

        driver.get(f"{base}/studies")
        driver.find_element(By.LINK_TEXT, uid).click()
        # a heatmap per view, once the study page has loaded
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "img.thumb")) == 4, timeout=15)
        images = driver.find_elements(By.CSS_SELECTOR, "img.thumb")
        wait_for(
            lambda: all(
                driver.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", i
                )
                for i in images
            )
        )
        _screenshot(driver, tmp_path, "study-failed.png")
        source = driver.page_source
        for text in PATIENT_DATA:
            assert text not in source

        driver.find_element(By.CSS_SELECTOR, "#resend-study button").click()
        wait_for(lambda: "Re-queued 6 failed delivery(ies)" in driver.page_source, timeout=15)
        wait_for(lambda: len(pacs.received) == 6, timeout=30)
        driver.refresh()
        states = [
            row.find_elements(By.TAG_NAME, "td")[3].text
            for row in driver.find_elements(By.CSS_SELECTOR, "table.deliveries tr")[1:]
        ]
        assert states == ["sent"] * 6
        assert "by ops" in driver.page_source  # the action in the study's event log
        _screenshot(driver, tmp_path, "study.png")

        # Re-run the analysis: a second job, its objects at the PACS, who asked on the page.
        driver.find_element(By.CSS_SELECTOR, "#reanalyse button").click()
        wait_for(lambda: "Re-analysis queued as job 2." in driver.page_source, timeout=15)
        wait_for(lambda: len(pacs.received) == 12, timeout=60)
        wait_for(lambda: [j.state for j in jobs.jobs_of_study(uid)] == ["done", "done"], timeout=30)
        driver.refresh()
        assert "Re-analysis requested by <strong>ops</strong>" in driver.page_source
        assert "revision 2: the same instances analysed again, requested by ops" in (
            driver.page_source
        )
        for path in ("/", "/studies", "/events"):
            driver.get(base + path)
            for text in PATIENT_DATA:
                assert text not in driver.page_source, (path, text)
    finally:
        driver.quit()
        pacs.stop()
    first, rerun = jobs.jobs_of_study(uid)
    assert (first.state, rerun.state, rerun.requested_by) == ("done", "done", "ops")


def test_config_hash_password_prints_a_hash_that_logs_in() -> None:
    from click.testing import CliRunner

    from cad_node.cli import main

    result = CliRunner().invoke(main, ["config", "hash-password"], input="pw-1\npw-1\n")
    assert result.exit_code == 0, result.output
    stored = result.output.strip().splitlines()[-1]
    assert password_matches("pw-1", stored) and "pw-1" not in stored
