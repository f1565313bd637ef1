"""The MLflow UI as a user sees a seglab run: headless Chromium (Debian's) on the stack's server.
The docs' picture (docs/mlflow-run.png) is `open_mask_picture`'s view of a real run."""

import pytest
from mlflow import MlflowClient

from seglab.tracking.run import masks_file
from seglab.util import visualize
from tests.conftest import TINY
from tests.system import program

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
UI_TIMEOUT_MS = 60_000  # the UI bundle is large and the machine busy; every wait below is bounded by this
VIEWPORT = {"width": 1400, "height": 1000}


@pytest.mark.slow
def test_run_page_shows_mask_images_and_metric_charts(tracking_stack, stack_run, tmp_path):
    chromium = program("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    run_id, _, _ = stack_run
    experiment_id = MlflowClient(tracking_stack.uri).get_run(run_id).info.experiment_id
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, timeout=UI_TIMEOUT_MS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
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


def open_mask_picture(page, uri: str, experiment_id: str, run_id: str, run_name: str, file: str):
    """As a user does: the run's page, its Artifacts tab, the masks folder, the picture `file`;
    the <img> showing it."""
    page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{run_id}")
    page.get_by_role("heading", name=run_name).wait_for()
    if page.get_by_role("button", name="Close").count():  # MLflow 3's assistant panel takes a third of the page
        page.get_by_role("button", name="Close").first.click()
    page.get_by_role("tab", name="Artifacts").click()
    folder, name = file.rsplit("/", 1)
    page.get_by_text(folder, exact=True).click()
    page.get_by_text(name, exact=True).click()
    page.get_by_text(file, exact=True).wait_for()  # the preview's title
    # The picture, fetched through the server's artifact proxy (the UI shows it from a blob: URL) and decoded.
    page.wait_for_function("""() => [...document.images].some(im => im.src.startsWith('blob:') && im.complete
                                                                 && im.naturalWidth > 0)""")
    return page.locator("img[src^='blob:']").first


@pytest.mark.slow
def test_artifact_view_lists_and_renders_the_per_epoch_mask_picture(tracking_stack, stack_run, tmp_path):
    chromium = program("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    run_id, _, _ = stack_run
    experiment_id = MlflowClient(tracking_stack.uri).get_run(run_id).info.experiment_id
    last = masks_file(int(dict(arg.split("=") for arg in TINY)["trainer.epochs"]) - 1)  # masks/epoch_002.png
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, timeout=UI_TIMEOUT_MS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            image = open_mask_picture(page, tracking_stack.uri, experiment_id, run_id, "unet-ce-shapes", last)
            listed = [masks_file(0), last]
            for file in listed:  # every epoch's picture is listed in the artifact tree
                page.get_by_text(file.rsplit("/", 1)[1], exact=True).wait_for()
            size = image.evaluate("im => [im.naturalWidth, im.naturalHeight]")
            box = image.bounding_box()
            page.screenshot(path=str(tmp_path / "artifact-view.png"))
        finally:
            browser.close()
    assert size[0] >= 3 * visualize.MASK_PANEL_PX and size[1] >= 2 * visualize.MASK_PANEL_PX  # 3 columns, 2 samples
    # In the first screen, without scrolling: the picture's top half at least lies inside the viewport.
    assert box is not None and box["y"] + box["height"] / 2 < VIEWPORT["height"] and box["width"] >= 400


@pytest.mark.slow
def test_the_address_a_run_prints_opens_the_model_training_view_in_a_new_browser(tracking_stack, stack_run, tmp_path):
    """MLflow 3 opens in its GenAI view (traces, agent versions) by default: the address the console prints
    selects the model-training view, and the UI keeps it on the way from the run to its experiment's runs."""
    chromium = program("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    run_id, _, done = stack_run
    (address,) = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith(f"MLflow run {run_id}: ")]
    assert address.startswith(tracking_stack.uri) and address.endswith("?workflowType=machine_learning")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, timeout=UI_TIMEOUT_MS)
        try:
            page = browser.new_page(viewport=VIEWPORT)  # a fresh profile: no view chosen before
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(address)
            page.get_by_role("heading", name="unet-ce-shapes").wait_for()
            page.get_by_role("tab", name="Model metrics").wait_for()
            # The side navigation of the model-training view: Runs and Models of the experiment, in that view.
            runs = page.locator("a[href*='/runs?workflowType=machine_learning']").first
            assert page.locator("a[href*='/models?workflowType=machine_learning']").count() >= 1
            runs.click()
            page.get_by_text("Run Name", exact=True).wait_for()  # the runs table, not the GenAI overview
            page.get_by_role("link", name="unet-ce-shapes").first.wait_for()
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "experiment-runs.png"))
        finally:
            browser.close()
    assert "No cost data available" not in text and "Agent versions" not in text  # GenAI's overview cards
