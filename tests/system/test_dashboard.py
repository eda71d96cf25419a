"""The web dashboard in a real browser (Debian's headless Chromium, driven through its
ChromeDriver by Selenium) against a real three-node network: what it shows, what it shows once a
node is killed, and downloads compared with what was backed up. Screenshots are kept in
build/screenshots/ (CI's artifacts)."""

from __future__ import annotations

import os
import signal
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from .procs import ROOT, ProcessCluster, free_port, start_lanvault

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "build" / "screenshots"
RESTORING = '#running .activity[data-kind="restore"]'
PWNED = "<img src=x onerror=window.__pwned=1> & <b>bold.txt"  # a file name, not markup
T = TypeVar("T")

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.fail(
        "the dashboard's browser tests need Debian's chromium and chromium-driver"
        " (scripts/setup dev installs them)",
        pytrace=False,
    )

from selenium import webdriver  # noqa: E402  (after the check that says what is missing)
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[ProcessCluster, str]]:
    cluster = ProcessCluster(tmp_path / "net", 3)
    try:
        cluster.start(1, "--web", f"127.0.0.1:{free_port()}")
        cluster.start_all()
        yield cluster, cluster.cli(1, "dashboard").stdout.strip()
    finally:
        cluster.stop_all()
        cluster.assert_no_tracebacks()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root, in a test
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",  # this machine's network is closed
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver
    finally:
        driver.quit()


def until(
    driver: WebDriver, condition: Callable[[WebDriver], T | None], what: str, wait: float = 60
) -> T:
    """``condition``'s first true value (the page polls every two seconds)."""
    waiting = WebDriverWait(
        driver, wait, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )  # the page redraws what it shows: an element found may be gone by the next step
    found = waiting.until(condition, f"timed out: {what}")
    assert found is not None
    return found


def entries(driver: WebDriver) -> dict[str, WebElement]:
    """The rows of the folder being browsed, by path."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
    return {row.get_attribute("data-path") or "": row for row in rows}


def click(element: WebElement | None, inside: str = "") -> bool | None:
    """Click ``element`` (or the first ``inside`` tag in it): True, or None if not there yet."""
    if element is None:
        return None
    (element.find_element(By.TAG_NAME, inside) if inside else element).click()
    return True


def screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def node_states(driver: WebDriver) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
    return {
        row.get_attribute("data-node-id") or "": row.get_attribute("data-state") or ""
        for row in rows
    }


def downloaded(folder: Path, name: str) -> Path | None:
    """The finished download ``name`` (Chromium writes .crdownload until it is whole)."""
    path = folder / name
    partial = [p for p in folder.iterdir() if p.name.endswith(".crdownload")]
    return path if path.exists() and not partial else None


def test_the_dashboard_shows_the_network_and_gives_back_what_was_backed_up(
    network: tuple[ProcessCluster, str], browser: WebDriver, tmp_path: Path
) -> None:
    cluster, url = network
    data = tmp_path / "photos"
    (data / "2026" / "summer").mkdir(parents=True)
    beach = os.urandom(300_000)
    (data / "2026" / "summer" / "beach.jpg").write_bytes(beach)
    (data / "notes.txt").write_text("remember the sunscreen\n")
    (data / PWNED).write_bytes(b"harmless")
    cluster.cli(1, "backup", data, "--degree", "2")
    run = cluster.json(1, "snapshots")["snapshots"][-1]["id"]
    notes = f"/download?{urllib.parse.urlencode({'snapshot': run, 'path': f'{data}/notes.txt'})}"
    downloads = tmp_path / "downloads"

    # Without the token: nothing, whatever is asked for.
    origin = url.split("/?", 1)[0]
    browser.get(origin + "/")
    assert "needs the node's token" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(origin + notes)  # shown as a page saying why: not a download
    assert "needs the node's token" in browser.find_element(By.TAG_NAME, "body").text
    assert list(downloads.iterdir()) == []

    # The token is in no log another local user could read (only STATE/web-token, 0600).
    token = url.split("token=", 1)[1]
    for node in cluster.nodes.values():
        assert token not in node.log.read_text()
    assert oct((cluster.nodes[1].state / "web-token").stat().st_mode & 0o777) == "0o600"

    # With it: the token goes into a cookie and out of the address bar.
    browser.get(url)
    assert browser.current_url == origin + "/"
    until(
        browser,
        lambda d: node_states(d) == {"1": "self", "2": "up", "3": "up"},
        "three nodes, all up",
    )
    folders = until(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#trees tbody tr"), "the backup"
    )
    assert str(data) in folders[0].text
    screenshot(browser, "dashboard")

    # A node killed shows as down (its heartbeats stop: 0.5 s each, down after 5 s).
    cluster.kill(3)
    until(browser, lambda d: node_states(d).get("3") == "down", "node 3 down", wait=90)
    assert node_states(browser)["2"] == "up"
    screenshot(browser, "node-down")

    # Browse the backup and download from it, node 3 still down: the copies on 1 and 2 serve.
    until(
        browser,
        lambda d: click(d.find_element(By.CSS_SELECTOR, "#trees tbody tr button")),
        "browse",
    )
    rows = until(
        browser, lambda d: entries(d) if len(entries(d)) == 3 else None, "the backup's entries"
    )
    names = sorted(r.find_element(By.TAG_NAME, "td").text for r in rows.values())
    assert names == sorted(["2026/", "notes.txt", PWNED])  # the odd name shown as text
    assert browser.execute_script("return window.__pwned") is None
    until(browser, lambda d: click(entries(d)[f"{data}/2026"], "button"), "open 2026")
    until(browser, lambda d: click(entries(d).get(f"{data}/2026/summer"), "button"), "open summer")
    beach_row = f"{data}/2026/summer/beach.jpg"
    until(browser, lambda d: beach_row in entries(d), "beach.jpg listed")
    screenshot(browser, "browse")
    until(browser, lambda d: click(entries(d)[beach_row], "a"), "download beach.jpg")
    got = until(browser, lambda d: downloaded(downloads, "beach.jpg"), "beach.jpg downloaded")
    assert got.read_bytes() == beach

    # A whole folder, as a tar stream.
    until(browser, lambda d: click(d.find_element(By.CSS_SELECTOR, "#crumbs button")), "top")
    until(browser, lambda d: len(entries(d)) == 3, "back at the top")
    until(browser, lambda d: click(d.find_element(By.ID, "download-folder")), "download all")
    tar_path = until(browser, lambda d: downloaded(downloads, "photos.tar"), "photos.tar")
    with tarfile.open(tar_path) as tar:
        assert tar.extractfile("photos/2026/summer/beach.jpg").read() == beach  # type: ignore[union-attr]
        assert tar.extractfile("photos/notes.txt").read() == b"remember the sunscreen\n"  # type: ignore[union-attr]
        assert tar.extractfile(f"photos/{PWNED}").read() == b"harmless"  # type: ignore[union-attr]

    # A restore shows while it runs: node 3 is down, and node 2, the other holder, stops
    # answering until the dashboard has shown it (then the restore finishes).
    holder = cluster.pid(2)
    assert holder is not None
    os.kill(holder, signal.SIGSTOP)
    back = tmp_path / "back.jpg"
    state = cluster.nodes[1].state
    restore = start_lanvault(
        "restore", f"{data}/2026/summer/beach.jpg", "--to", back, "--dir", state
    )
    try:
        running = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, RESTORING), "restore")
        assert "beach.jpg" in running[0].text
        screenshot(browser, "running")
    finally:
        os.kill(holder, signal.SIGCONT)
    _out, err = restore.communicate(timeout=120)  # and its pipes closed
    assert restore.returncode == 0, err
    assert back.read_bytes() == beach
    until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, RESTORING), "restore done")

    # The token is needed for the downloads outside the browser too (it holds the cookie).
    request = urllib.request.Request(origin + notes)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    refused.value.close()  # it holds the connection
    assert refused.value.code == 401
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.read() == b"remember the sunscreen\n"
