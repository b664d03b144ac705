"""The playground page in a real headless browser: Debian's Chromium driven by Playwright.

Playwright's own browser download does not work offline, so the test launches /usr/bin/chromium (`apt-get install
chromium`; `.ci/run` does it) and skips, saying why, when it is absent. The screenshot lands in
runs/test-artifacts/playground.png.
"""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"browser test needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/")
    page.wait_for_function("document.querySelectorAll('#model-a option').length === 2")
    yield page
    assert not errors, errors
    context.close()


def set_value(page, selector: str, value) -> None:
    """Type into a field, or move a slider and let the page hear it."""
    if page.get_attribute(selector, "type") == "range":
        page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                              str(value))
    else:
        page.fill(selector, str(value))


@pytest.mark.slow
def test_generate_streams_the_story_the_api_writes(page, server):
    page.select_option("#model-a", "stories260K")
    page.fill("#beginning", "Once upon a time")
    set_value(page, "#temperature", 0.9)
    set_value(page, "#seed", 7)
    set_value(page, "#max_tokens", 64)
    page.click("button:has-text('Generate')")
    card = page.locator(".story.done")
    card.wait_for(timeout=30_000)
    shown = card.locator(".generated").inner_text()
    assert int(card.get_attribute("data-chunks")) > 10  # arrived in pieces, not at once
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)
    api = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=64, temperature=0.9,
                                    top_p=0.95, seed=7)
    assert shown == api.choices[0].text and len(shown) > 100
    assert "seed 7" in card.locator(".story-stats").inner_text()


@pytest.mark.slow
def test_side_by_side_and_the_top_five_view(page):
    page.fill("#beginning", "Once upon a time, there was a little")
    page.click(".chip[data-feature=Dialogue]")
    page.click(".chip[data-feature=Twist]")
    set_value(page, "#temperature", 0)
    set_value(page, "#max_tokens", 96)
    page.check("#compare")
    page.select_option("#model-a", "stories260K")
    page.select_option("#model-b", "tiny")
    page.click("button:has-text('Generate')")
    page.wait_for_function("document.querySelectorAll('.story.done').length === 2", timeout=30_000)
    cards = page.locator(".story")
    assert [cards.nth(i).locator(".model-name").inner_text() for i in range(2)] == ["stories260K", "tiny"]
    assert all(len(cards.nth(i).locator(".generated").inner_text()) > 20 for i in range(2))

    word = cards.nth(0).locator(".tok", has_text="play").first
    word.click()
    panel = cards.nth(0).locator(".alternatives")
    assert panel.is_visible()
    rows = panel.locator("li")
    assert rows.count() == 5
    # greedy: the token written is the most likely one, first in the list
    assert "chosen" in rows.nth(0).get_attribute("class")
    percents = [float(rows.nth(i).locator(".p").inner_text().rstrip("%")) for i in range(5)]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.5
    assert not math.isclose(percents[0], 0.0)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert (ARTIFACTS / "playground.png").stat().st_size > 20_000
