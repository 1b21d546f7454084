"""The neural debugger's web page in a real headless browser (Debian's chromium and its driver, through selenium):
buttons move through the real frames, the current line is highlighted, predicted and real locals stand side by
side, editing a local predicts on from it, and the server answers loopback names only. A screenshot is saved with
the test's output."""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request

import pytest
from test_debugger import SOURCE, real

from opencwm.infer.debugger import NeuralDebugger
from opencwm.infer.local import LocalCompleter
from opencwm.infer.truth import TruthSource
from opencwm.infer.web import DebuggerApp, make_server
from opencwm.trace.codec import resolve_locals


def served_page(model):
    """The page of a debugger session on f(3) with ``model``: its URL while the generator is open."""
    frames = real("f(3)").frames
    debugger = NeuralDebugger(LocalCompleter.from_checkpoint(model), SOURCE, real("f(3)").entry_lineno,
                              first_frame=frames[0])
    server = make_server(DebuggerApp(debugger, TruthSource(SOURCE, "f", "f(3)")), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(debug_demo_model):
    yield from served_page(debug_demo_model)


@pytest.fixture
def untrained_page(untrained_checkpoint):
    yield from served_page(untrained_checkpoint)


def test_a_foreign_host_name_is_refused(untrained_page):
    page = untrained_page
    port = page.rsplit(":", 1)[1].strip("/")
    request = urllib.request.Request(page + "api/state", headers={"Host": f"evil.example:{port}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403
    assert urllib.request.urlopen(page + "api/state", timeout=10).status == 200


@pytest.mark.slow
def test_the_page_in_a_headless_browser(page, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not shutil.which("chromedriver"):
        pytest.skip("chromium's driver is not installed (make install adds it)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    frames = real("f(3)").frames
    resolved = resolve_locals(frames)
    wait = WebDriverWait(driver, 60)

    def current_line() -> str:
        return driver.find_element(By.CSS_SELECTOR, "#source .current").get_attribute("id")

    def locals_table() -> dict:
        table = {}
        for row in driver.find_elements(By.CSS_SELECTOR, "#locals tbody tr"):
            cells = row.find_elements(By.TAG_NAME, "td")
            table[cells[0].text] = (cells[1].find_element(By.TAG_NAME, "input").get_attribute("value"), cells[3].text)
        return table

    try:
        driver.get(page)
        wait.until(lambda d: current_line() == f"line-{frames[0].lineno}")
        for index in (1, 2):  # step: y = square(x), then into square
            driver.find_element(By.ID, "step").click()
            wait.until(lambda d, i=index: current_line() == f"line-{frames[i].lineno}")
        driver.find_element(By.ID, "out").click()  # square returns, then the line after the call
        wait.until(lambda d: current_line() == f"line-{frames[5].lineno}")
        table = locals_table()
        assert {name: p for name, (p, r) in table.items()} == resolved[5]  # predicted
        assert {name: r for name, (p, r) in table.items()} == resolved[5]  # real, beside them
        assert "no divergence so far" in driver.find_element(By.ID, "truth").text
        driver.save_screenshot(str(tmp_path / "debugger-web.png"))
        # edit a local: y = 100 at `total = 0`; the model predicts on from the edited frame
        field = driver.find_element(By.CSS_SELECTOR, "#locals input[name='y']")
        field.clear()
        field.send_keys("100")
        next(row for row in driver.find_elements(By.CSS_SELECTOR, "#locals tbody tr")
             if row.find_element(By.TAG_NAME, "td").text == "y").find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: locals_table().get("y", ("", ""))[0] == "100")
        assert "(set)" in driver.find_element(By.ID, "steps").text
        assert "edited" in driver.find_element(By.ID, "truth").text  # the truth stops before an edited state
        driver.find_element(By.ID, "back").click()
        wait.until(lambda d: current_line() == f"line-{frames[4].lineno}")
        assert (tmp_path / "debugger-web.png").stat().st_size > 10_000
    finally:
        driver.quit()
