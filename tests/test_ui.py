"""The MLflow UI as a user sees a seglab run: headless Chromium (Debian's) on the stack's server."""

import pytest
from mlflow import MlflowClient

from tests.system import program

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
UI_TIMEOUT_MS = 60_000  # the UI bundle is large and the machine busy; every wait below is bounded by this


@pytest.mark.slow
def test_run_page_shows_mask_images_and_metric_charts(tracking_stack, stack_run, tmp_path):
    chromium = program("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    run_id, _, _ = stack_run
    experiment_id = MlflowClient(tracking_stack.uri).get_run(run_id).info.experiment_id
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, timeout=UI_TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(f"{tracking_stack.uri}/#/experiments/{experiment_id}/runs/{run_id}")
            page.get_by_role("heading", name="unet-ce-shapes").wait_for()
            if page.get_by_role("button", name="Close").count():  # MLflow 3's assistant panel takes a third of the page
                page.get_by_role("button", name="Close").first.click()
            page.get_by_role("tab", name="Model metrics").click()
            page.get_by_placeholder("Search metric charts").fill("val_m")  # val_masks, val_mean_iou, val_mean_dice
            # A metric chart, drawn by plotly, with its title ...
            page.get_by_text("val_mean_iou", exact=True).first.wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            # ... and the per-epoch mask image, fetched through the server's artifact proxy and decoded.
            page.wait_for_function(
                """() => [...document.images].some(im => im.src.includes('get-artifact')
                        && im.src.includes('val_masks') && im.complete && im.naturalWidth > 0)"""
            )
            masks = page.eval_on_selector_all(
                "img", "els => els.filter(e => e.src.includes('val_masks')).map(e => [e.naturalWidth, e.naturalHeight])"
            )
            image = page.locator("img[src*='val_masks']").first
            image.scroll_into_view_if_needed()
            assert image.is_visible()
            page.screenshot(path=str(tmp_path / "run-page.png"))
        finally:
            browser.close()
    (width, height), *_ = masks
    assert width > 3 * 32 and height >= 2 * 32  # input | true mask | prediction, two samples
    assert (tmp_path / "run-page.png").stat().st_size > 10_000
