"""``scanstream web`` as a person uses it: a real headless Chromium against the command, while
scans run. The assertions read what the page shows (its text and the state of its widgets);
screenshots go to the test's tmp dir."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from scanstream import DataStore, PublishingSession, SavingState, SavingVerdict, create_session
from scanstream._protocol import entries
from scanstream.sim import (
    GaussianCounter,
    LimaDetector,
    Mca,
    Motor,
    SavingConfig,
    amesh,
    ascan,
    loopscan,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def viewer_url(redis_url: str) -> str:
    """The read-only user of docs/access.md: the view must work with it (it never writes)."""
    admin = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        admin.execute_command(
            "ACL", "SETUSER", "viewer", "reset", "on", ">viewer-secret", "resetkeys",
            "%R~scanstream:*", "resetchannels", "-@all", "+@read", "+@connection", "-@dangerous",
        )  # fmt: skip
    finally:
        admin.close()
    host_port = redis_url.split("://", 1)[1]
    return f"redis://viewer:viewer-secret@{host_port}"


@pytest.fixture
def beamline(store: DataStore) -> Iterator[PublishingSession]:
    """A publishing session with no writer (and no warning about it: these scans stay in Redis)."""
    publishing = create_session("web_session", store=store, warn_no_writer=False)
    try:
        yield publishing
    finally:
        publishing.close()


def _in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = func()
        except BaseException as exc:  # reported by the test after join()
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _join(thread: threading.Thread, out: dict[str, Any]) -> Any:
    thread.join(timeout=30)
    assert not thread.is_alive(), "the scan did not end"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_a_running_scan_is_listed_and_its_curve_gets_every_point(
    beamline: PublishingSession, viewer_url: str, start_web: Any, new_page: Any, screenshots: Any
) -> None:
    web = start_web(url=viewer_url)  # a read-only Redis user: the view writes nothing
    roby = Motor("roby")
    gauss = GaussianCounter("gauss", roby, center=0.5, fwhm=0.2)
    npoints = 50
    page, other = new_page(), new_page()  # two browsers on one scan
    page.goto(web.url)
    thread, out = _in_thread(
        lambda: ascan(beamline, roby, 0, 1, npoints - 1, 0.08, gauss, sleep=True)
    )
    row = page.locator("tr[data-scan='web_session:1']")
    row.wait_for()
    assert "ascan roby 0 1" in row.inner_text()
    assert "roby" in row.locator("td").nth(5).inner_text()
    row.locator("a").click()
    other.goto(web.url + "#/scan/web_session/1")
    label = page.locator("#curve-points")
    label.wait_for()
    # Seen while it runs: fewer points than published in the end.
    seen_running = page.wait_for_function(
        "() => { const l = document.getElementById('curve-points');"
        " return l && l.dataset.state === 'PREPARED' && +l.dataset.points > 0; }"
    )
    assert seen_running
    screenshots(page, "curve-running")
    result = _join(thread, out)
    assert result.state.name == "DONE"
    for browser_page in (page, other):
        browser_page.wait_for_function(
            f"() => {{ const l = document.getElementById('curve-points');"
            f" return l && l.dataset.state === 'DONE' && +l.dataset.points === {npoints}; }}"
        )
        assert browser_page.evaluate("window.scanstreamStats.rows") == npoints
    assert f"{npoints} points" in label.inner_text()
    # The analysis is that of scanstream.analysis on the whole published curve.
    page.locator(f"#analysis[data-count='{npoints}']").wait_for()
    cen = float(
        page.locator(
            "#analysis tr[data-curve='simulation_counter_controller:gauss'] td.cen"
        ).inner_text()
    )
    assert cen == pytest.approx(0.5, abs=0.02)
    # The cursor read-out: the legend shows the values under the mouse.
    plot = page.locator("#curve .u-over")
    box = plot.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    legend_value = page.locator("#curve .u-legend .u-series").nth(1).locator(".u-value")
    assert legend_value.inner_text() not in ("", "--")

    # Drag to zoom on x, double-click back to the whole range.
    def x_range() -> tuple[float, float]:
        curve = page.locator("#curve")
        return float(curve.get_attribute("data-xmin") or "nan"), float(
            curve.get_attribute("data-xmax") or "nan"
        )

    assert x_range() == (0.0, 1.0)
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 20, steps=5)
    page.mouse.up()
    low, high = x_range()
    assert 0.2 <= low < high <= 0.55
    page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("() => document.getElementById('curve').dataset.xmax === '1'")
    page.check("#log-y")
    screenshots(page, "curve-done")
    # Back to the list: the search keeps the scan for its title, motor and date words only.
    page.click("a.brand")
    row.wait_for()
    page.fill("#search", "ascan roby")  # the search keeps it; another word hides it
    assert row.is_visible()
    page.fill("#search", "mesh")
    page.locator("#summary").filter(has_text="0 of 1 scans").wait_for()
    today = time.strftime("%Y-%m-%d")  # the start date, as the list shows it (local time)
    page.fill("#search", f"roby {today}")
    page.locator("#summary").filter(has_text="1 of 1 scans").wait_for()
    page.fill("#search", "")


def test_a_mesh_scan_is_drawn_as_a_map_of_its_shape(
    beamline: PublishingSession, store: DataStore, start_web: Any, new_page: Any, screenshots: Any
) -> None:
    web = start_web()
    roby, robz = Motor("roby"), Motor("robz")
    gauss = GaussianCounter("gauss", roby, center=0.5, fwhm=0.3)
    result = amesh(beamline, roby, 0, 1, 5, robz, 0, 1, 3, 0.01, gauss)
    page = new_page()
    page.goto(web.url + f"#/scan/web_session/{result.number}")
    page.wait_for_function(
        "() => { const m = document.getElementById('map'); return m && m.dataset.count === '24'; }"
    )
    canvas = page.locator("#map")
    assert canvas.get_attribute("data-shape") == "6x4"
    assert page.evaluate(
        "[document.getElementById('map').width, document.getElementById('map').height]"
    ) == [6, 4]
    assert "6 × 4, 24/24 points" in page.locator("#map-label").inner_text()
    # The brightest column is the one of the peak (roby = 0.4 and 0.6: columns 2 and 3).
    brightness = page.evaluate(
        "(() => { const c = document.getElementById('map').getContext('2d');"
        " return [0, 1, 2, 3, 4, 5].map(x => c.getImageData(x, 1, 1, 1).data.slice(0, 3)"
        ".reduce((a, b) => a + b, 0)); })()"
    )
    assert brightness.index(max(brightness)) in (2, 3)
    # The owning writer records its verdict in the scan hash; the page shows where it went.
    store.redis.hset(
        store.keys.scan("web_session", result.number),
        mapping=entries.saving_fields(
            SavingVerdict(SavingState.SAVED, "/data/web_session.h5", ("1.1",), {"gauss": 24})
        ),
    )
    page.locator("#scan-saving").filter(has_text="saved in /data/web_session.h5 :: 1.1").wait_for()
    screenshots(page, "mesh")


def test_the_image_slider_reaches_the_last_frame_and_spectra_show(
    beamline: PublishingSession, start_web: Any, new_page: Any, screenshots: Any, tmp_path: Any
) -> None:
    web = start_web()
    camera = LimaDetector("cam", shape=(48, 64))
    mca = Mca("mca1")
    nframes = 12
    page = new_page()
    page.goto(web.url)
    thread, out = _in_thread(
        lambda: loopscan(beamline, nframes, 0.05, camera, mca, sleep=True,
                         saving=SavingConfig(str(tmp_path / "data"), "web_session"))
    )  # fmt: skip
    page.locator("tr[data-scan='web_session:1'] a").click()
    slider = page.locator("#frame-slider")
    slider.wait_for()
    _join(thread, out)
    page.wait_for_function(f"() => document.getElementById('frame-slider').max === '{nframes - 1}'")
    slider.fill("0")  # back to the first frame, then to the last one
    page.locator("#frame-label").filter(has_text=f"frame 1 of {nframes}").wait_for()
    slider.fill(str(nframes - 1))
    page.locator("#frame-label").filter(has_text=f"frame {nframes} of {nframes}").wait_for()
    assert page.locator("#frame-label").get_attribute("data-index") == str(nframes - 1)
    assert page.evaluate("document.getElementById('frame').width") == 64
    page.locator("#spectrum-label").filter(has_text=f"spectrum {nframes} of {nframes}").wait_for()
    # The waterfall is drawn after the spectrum, from its own request: one row per spectrum.
    page.wait_for_function(f"() => document.getElementById('waterfall').height === {nframes}")
    screenshots(page, "images-and-spectra")


def test_overlay_of_two_scans(
    beamline: PublishingSession, start_web: Any, new_page: Any, screenshots: Any
) -> None:
    web = start_web("web_session")
    roby = Motor("roby")
    first = ascan(beamline, roby, 0, 1, 20, 0.01, GaussianCounter("gauss", roby, center=0.3))
    second = ascan(beamline, roby, 0, 1, 30, 0.01, GaussianCounter("gauss", roby, center=0.6))
    page = new_page()
    page.goto(web.url)
    for number in (first.number, second.number):
        page.locator(f"tr[data-scan='web_session:{number}'] input[type=checkbox]").check()
    page.click("#overlay")
    page.locator("#curve-points").filter(has_text="21 points").wait_for()
    legend = page.locator(".u-legend")
    legend.filter(has_text=f"gauss #{second.number}").wait_for()
    assert f"gauss #{first.number}" in legend.inner_text()
    # This view shows web_session only: another session's scans are not served.
    assert page.evaluate("fetch('api/scan/elsewhere/1').then(r => r.status)") == 404
    screenshots(page, "overlay")


def test_a_page_opened_before_the_scan_has_channels_shows_them_when_they_come(
    beamline: PublishingSession, start_web: Any, new_page: Any
) -> None:
    web = start_web()
    scan = beamline.create_scan("timescan", {"title": "early bird", "type": "timescan"})
    page = new_page()
    page.goto(web.url + "#/scan/web_session/1")
    page.locator("#scan-state").filter(has_text="CREATED").wait_for()
    assert page.locator("#curve-points").count() == 0  # nothing to plot yet
    timer = scan.create_container("timer")
    elapsed = timer.create_channel("elapsed_time", dtype="float64", unit="s")
    diode = timer.create_container("diode_controller").create_channel("diode", dtype="float64")
    scan.prepared()
    elapsed.emit([0.0, 0.1, 0.2])
    diode.emit([1.0, 3.0, 2.0])
    page.locator("#curve-points").filter(has_text="3 points").wait_for()
    scan.end()
    page.locator("#curve-points").filter(has_text="DONE").wait_for()


def test_channels_of_one_short_name_and_fine_axes_are_told_apart(
    beamline: PublishingSession, start_web: Any, new_page: Any, screenshots: Any
) -> None:
    """A scan of two timers (each its own elapsed_time and epoch) and times 0.1 ms apart."""
    web = start_web()
    scan = beamline.create_scan("timescan", {"title": "two timers", "type": "timescan"})
    channels = {}
    for timer_name in ("timer1", "timer2"):
        timer = scan.create_container(timer_name)
        channels[timer_name] = timer.create_channel("elapsed_time", dtype="float64", unit="s")
        timer.create_channel("epoch", dtype="float64", unit="s").emit(
            [1764769860.0 + i * 1e-4 for i in range(10)]
        )
    diode = scan.create_container("diode_controller").create_channel("diode", dtype="float64")
    scan.prepared()
    for elapsed in channels.values():
        elapsed.emit([i * 1e-4 for i in range(10)])
    diode.emit([float(i % 3) for i in range(10)])
    scan.end()
    page = new_page()
    page.goto(web.url + f"#/scan/web_session/{scan.number}")
    page.locator("#curve-points").filter(has_text="DONE").wait_for()
    # Each curve its own name: the short one where it is unique, the full one elsewhere.
    names = ["diode", "timer1:elapsed_time", "timer1:epoch", "timer2:elapsed_time", "timer2:epoch"]
    options = page.locator("#x-select option").all_inner_texts()
    assert sorted(options) == sorted(["point index", *names])
    x = page.eval_on_selector("#x-select", "s => s.options[s.selectedIndex].text")
    labels = [text.strip() for text in page.locator("#y-select label").all_inner_texts()]
    assert sorted(labels) == sorted(set(names) - {x})
    # Each column is that channel's data: timer2's epoch, not timer1's again.
    page.select_option("#x-select", label="timer2:epoch")
    page.locator("#y-select label").filter(has_text="timer1:epoch").locator("input").check()
    page.wait_for_function("() => +document.getElementById('curve').dataset.xmax > 1764769860")
    # The tick labels the axes draw (on the canvas): as many digits as their spacing needs.
    assert page.evaluate("tickLabels([0, 0.0001, 0.0002, null], false)") == [
        "0.0000", "0.0001", "0.0002", "",
    ]  # fmt: skip
    epoch_ticks = page.evaluate("tickLabels([1764769860.1, 1764769860.2, 1764769860.3], false)")
    assert epoch_ticks == ["1764769860.1", "1764769860.2", "1764769860.3"]
    assert page.evaluate("tickLabels([-1e-17, 0.5, 1], false)") == ["0.0", "0.5", "1.0"]
    fine = page.evaluate("tickLabels([1e-9, 2e-9, 3e-9], false)")
    assert len(set(fine)) == 3 and all("e-9" in t for t in fine)
    screenshots(page, "two-timers")
