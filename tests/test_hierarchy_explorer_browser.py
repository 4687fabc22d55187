"""The hierarchy explorer in a real browser: headless Chromium opens the pages from the file system.

Opt-in: `make test-browser` installs Chromium (Debian package) and websocket-client
(scripts/setup_browser.sh) and runs the tests marked "browser". Without them these tests are
skipped, and the regular suite never installs them. The pages are those of
test_hierarchy_explorer.py (explorer_pages.py), whose cluster maps are checked there to equal the
model's; here the page must show them: what the mouse points at, the boundaries the slider
chooses, the overlays, the index's order.
"""
import importlib.util
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from explorer_pages import decode_picture, write_voc_explorer
from hcformer.utils.embedded_id_maps import decode_id_map
from hcformer.utils.hierarchy_page import IGNORED_SEGMENT, read_page_data
from hcformer_deploy.id_maps import cluster_boundaries
from tiny_configs import load_script

headless_browser = load_script("tools/headless_browser.py")  # a module of the tools, not of hcformer
Browser = headless_browser.Browser
CHROMIUM = headless_browser.find_chromium()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or importlib.util.find_spec("websocket") is None,
        reason="needs Chromium and websocket-client: `make test-browser` installs them (scripts/setup_browser.sh)",
    ),
]

ARROW_RIGHT = ("ArrowRight", "ArrowRight", 39)


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    return write_voc_explorer(tmp_path_factory.mktemp("explorer_browser"), "voc_explorer_browser_test")


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM) as session:
        yield session


@pytest.fixture
def page(explorer, browser):
    """The first image's page, freshly loaded; (browser, its embedded data)."""
    path = explorer.html / "images" / "voc_sample.html"
    browser.events.clear()
    browser.open(path)
    return browser, read_page_data(path)


def _text(browser: Browser, element_id: str) -> str:
    return browser.evaluate(f"document.getElementById({element_id!r}).textContent")


def _point_at(browser: Browser, data: dict, x: int, y: int) -> None:
    """Move the mouse over the centre of image pixel (x, y), wherever CSS put the image."""
    box = json.loads(browser.evaluate("JSON.stringify(document.getElementById('stage').getBoundingClientRect())"))
    browser.move_mouse(box["left"] + (x + 0.5) * box["width"] / data["width"],
                       box["top"] + (y + 0.5) * box["height"] / data["height"])


def _drawn_boundaries(browser: Browser) -> np.ndarray:
    """(H, W) bool: the pixels the boundary layer has drawn (alpha > 0)."""
    indices = browser.evaluate(
        "(() => { const c = document.getElementById('layer-boundaries');"
        " const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const on = [];"
        " for (let i = 3; i < a.length; i += 4) if (a[i] > 0) on.push((i - 3) / 4); return on; })()"
    )
    shape = (browser.evaluate("document.getElementById('layer-boundaries').height"),
             browser.evaluate("document.getElementById('layer-boundaries').width"))
    drawn = np.zeros(shape[0] * shape[1], dtype=bool)
    drawn[indices] = True
    return drawn.reshape(shape)


def _wait_for(browser: Browser, expression: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not browser.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression} still false after {seconds} s"
        time.sleep(0.01)


def _show(browser: Browser, picture: str, ground_truth: bool) -> np.ndarray:
    """Choose the picture and the ground-truth overlay as a user does; the base layer's pixels
    once drawn (the page decodes a picture when it is first chosen)."""
    browser.evaluate(f"(() => {{ const s = document.getElementById('picture'); if (s.value !== {picture!r}) {{"
                     f" s.value = {picture!r}; s.dispatchEvent(new Event('change')); }} }})()")
    if browser.evaluate("document.getElementById('show-ground-truth').checked") != ground_truth:
        browser.evaluate("document.getElementById('show-ground-truth').click()")
    shows = f"{picture}+ground truth" if ground_truth else picture
    _wait_for(browser, f"document.getElementById('layer-base').dataset.shows === {shows!r}")
    return _base_pixels(browser)


def _base_pixels(browser: Browser) -> np.ndarray:
    values = browser.evaluate(
        "(() => { const c = document.getElementById('layer-base');"
        " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()"
    )
    return np.array(values, dtype=np.int16)


def _select_next_level(browser: Browser, data: dict) -> None:
    """Focus the slider and press the right arrow, as a user does; wait until the boundaries of
    the next clustering are drawn (its map is decoded on first use)."""
    following = data["clusterings"][int(browser.evaluate("document.getElementById('level').value")) + 1]["name"]
    browser.evaluate("document.getElementById('level').focus()")
    browser.press(*ARROW_RIGHT)
    _wait_for(browser, f"document.getElementById('layer-boundaries').dataset.clustering === {following!r}")


# ------------------------------------------------------------------ image page
def test_the_page_loads_without_errors_and_draws_something(page):
    browser, data = page
    assert browser.console_errors() == []
    assert "hover to inspect" in _text(browser, "status")
    screenshot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
    assert screenshot.shape[:2] == (900, 1280)
    # not blank: the photo, the yellow boundaries and the table are there
    assert screenshot.std() > 30 and len(np.unique(screenshot.reshape(-1, 3), axis=0)) > 1000
    assert np.all(screenshot == (255, 225, 0), axis=-1).sum() > 1000  # boundary yellow, drawn at level 0
    rows = browser.evaluate("document.querySelectorAll('#scores tbody tr').length")
    assert rows == len(data["clusterings"])


def test_hovering_a_pixel_shows_its_cluster_at_two_levels(page):
    browser, data = page
    maps = [decode_id_map(c["map"]) for c in data["clusterings"]]
    segments = decode_id_map(data["ground_truth"]["map"])
    # a pixel whose ids differ between level 0 and level 1: the page cannot show the right one by chance
    y, x = 180, 230
    assert maps[0][y, x] != maps[1][y, x]
    _point_at(browser, data, x, y)
    assert _text(browser, "hover-pixel") == f"x {x}, y {y}"
    assert _text(browser, "hover-cluster") == str(maps[0][y, x])
    assert f"cluster {maps[1][y, x]}," in _text(browser, "hover-parent")  # its parent, one level coarser

    # size, majority class and leaked pixels of the cluster, as leakage_mask counts them
    members = maps[1] == maps[1][y, x]
    labelled = members & (segments != IGNORED_SEGMENT)
    counts = np.bincount(segments[labelled])
    leaked = labelled.sum() - counts.max()
    _select_next_level(browser, data)  # level 1, the mouse still on the pixel
    assert _text(browser, "hover-cluster") == str(maps[1][y, x])
    assert _text(browser, "hover-size") == f"{members.sum()} px ({labelled.sum()} labelled)"
    majority = data["ground_truth"]["segments"][counts.argmax()]
    assert _text(browser, "hover-class") == f"{majority['class']} (segment {majority['id']})"
    assert _text(browser, "hover-leaked").startswith(f"{leaked} px = ")
    assert f"cluster {maps[2][y, x]}," in _text(browser, "hover-parent")

    # the highlight layer: the cluster's leaked pixels red, exactly
    red = browser.evaluate(
        "(() => { const c = document.getElementById('layer-highlight');"
        " const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 0; i < a.length; i += 4) if (a[i] === 230 && a[i + 1] === 20 && a[i + 3] > 0) n++;"
        " return n; })()"
    )
    assert red == leaked > 0


def test_the_slider_changes_the_drawn_level(page):
    browser, data = page
    maps = [decode_id_map(c["map"]) for c in data["clusterings"]]
    assert browser.evaluate("document.getElementById('level').value") == "0"
    level0 = _drawn_boundaries(browser)
    assert np.array_equal(level0, cluster_boundaries(maps[0]))  # the PNG panels' lines, pixel for pixel
    _select_next_level(browser, data)
    _select_next_level(browser, data)
    assert browser.evaluate("document.getElementById('layer-boundaries').dataset.clustering") == "level2"
    assert _text(browser, "level-name").startswith("level 2 · stride 16 · ")
    level2 = _drawn_boundaries(browser)
    assert np.array_equal(level2, cluster_boundaries(maps[2]))
    assert level2.sum() < level0.sum()  # coarser: fewer boundaries
    assert browser.evaluate("document.querySelector('#scores tr.current').dataset.index") == "2"
    assert browser.console_errors() == []


def test_the_overlays_change_the_picture(page):
    browser, data = page
    options = "Array.from(document.getElementById('picture').options).map((o) => o.value)"
    assert browser.evaluate(options) == ["photo", "panoptic", "instances", "semantic"]
    shown = {kind: _show(browser, kind, ground_truth=False) for kind in ("photo", "panoptic", "semantic")}
    embedded = {"photo": data["photo"], **data["predictions"]}
    for kind, pixels in shown.items():
        # the picture the page embeds (test_hierarchy_explorer.py checks what each one holds:
        # these weights give a semantic map but no panoptic segment), up to JPEG decoders' rounding
        expected = decode_picture(embedded[kind])
        assert np.abs(pixels.reshape(*expected.shape[:2], 4)[..., :3] - expected).mean() < 1, kind
    assert np.abs(shown["semantic"] - shown["photo"]).mean() > 1
    assert np.abs(_show(browser, "semantic", ground_truth=True) - shown["semantic"]).mean() > 10  # segments blended at 55 %
    assert np.array_equal(_show(browser, "photo", ground_truth=False), shown["photo"])  # back to the photo
    assert browser.console_errors() == []


# ------------------------------------------------------------------ index
def test_the_index_sorts_by_ue(explorer, browser):
    browser.events.clear()
    browser.open(explorer.html / "index.html")
    assert browser.console_errors() == []
    order = "Array.from(document.querySelectorAll('#images li')).map((li) => li.dataset.imageId)"
    ue = {e["image_id"]: e["scores"]["level3"]["UE"] for e in explorer.summary["images"]}
    assert browser.evaluate("document.getElementById('sort-by').value") == "level3"  # the coarsest, by default
    assert browser.evaluate(order) == sorted(ue, key=ue.get, reverse=True)  # worst first
    browser.evaluate("document.getElementById('sort-descending').click()")
    assert browser.evaluate(order) == sorted(ue, key=ue.get)
    ue = {e["image_id"]: e["scores"]["level0"]["UE"] for e in explorer.summary["images"]}
    browser.evaluate("(() => { const s = document.getElementById('sort-by'); s.value = 'level0';"
                     " s.dispatchEvent(new Event('change')); })()")
    assert browser.evaluate(order) == sorted(ue, key=ue.get)  # still best first, by another level
    # the two plots (UE, ASA): a point per clustering
    assert browser.evaluate("document.querySelectorAll('svg.plot').length") == 2
    assert browser.evaluate("document.querySelectorAll('svg.plot circle').length") == 2 * 5
    assert browser.console_errors() == []
