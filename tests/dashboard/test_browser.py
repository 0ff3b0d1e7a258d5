"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against a live server.

Clients train over real HTTP with fma-client and the service's in-process runner aggregates their
rounds, so the page is watched doing what it does for a developer. Screenshots of the two pages go
to ``out/screenshots/`` for a person to look at. Chromium is installed by ``make test``; when it
is missing these tests fail under ``CI=true`` and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import User
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    expect,
    sync_playwright,
)

from fma_aggregator import runners
from fma_client import Client
from fma_django import evaluations, services
from fma_django.models import Experiment, ModelArtifact

CHROMIUM = Path(os.environ.get("FMA_CHROMIUM", "/usr/bin/chromium"))
# Chromium must not reach for Google's services: this machine has no internet, and tests need none.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
WAIT_MS = 90_000  # a page condition, not a sleep: it passes as soon as the point is drawn
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
# axe-core, the accessibility checker, from the npm registry (api_service/package.json; `make` installs it)
expect.set_options(timeout=WAIT_MS)
AXE = Path(__file__).resolve().parents[2] / "api_service" / "node_modules" / "axe-core" / "axe.min.js"
INITIAL = {"dense": np.zeros((4, 3), dtype=np.float32), "bias": np.zeros(3, dtype=np.float32)}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; `make test` installs Debian's chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # Playwright's synchronous API keeps an event loop in this thread; the ORM calls the test
    # makes between browser steps are ordinary blocking calls, so tell Django they are meant.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def server(live_server, transactional_db, settings, tmp_path) -> str:
    settings.FMA_WEIGHTS_DIR = tmp_path / "weights"
    return live_server.url


class Watched:
    """What went wrong on a page while a test drove it: CSP violations, console errors (uncaught
    exceptions included) and failed requests (no answer, or a 4xx/5xx the test did not ask for)."""

    def __init__(self, page: Page) -> None:
        self.csp_violations: list[str] = []
        self.errors: list[str] = []
        self.failed: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("requestfailed", self._request_failed)
        page.on(
            "response",
            lambda answer: (
                self.failed.append(f"{answer.url}: {answer.status}") if answer.status >= 400 else None
            ),
        )

    def _request_failed(self, request: Request) -> None:
        # A request still in flight when the test moves to the next page (on a busy machine, the
        # favicon) is cancelled by the browser: that is the navigation, not the service failing.
        if request.failure != "net::ERR_ABORTED":
            self.failed.append(f"{request.url}: {request.failure}")

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)
        elif message.type == "error":
            self.errors.append(message.text)

    def clear(self) -> None:
        self.csp_violations.clear()
        self.errors.clear()
        self.failed.clear()

    def assert_clean(self) -> None:
        assert (self.csp_violations, self.errors, self.failed) == ([], [], [])


def open_page(chromium: Browser, server: str, viewport: dict[str, int]) -> tuple[BrowserContext, Page]:
    context = chromium.new_context(base_url=server, viewport=viewport)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.watched = Watched(page)
    return context, page


@pytest.fixture
def page(chromium: Browser, server: str) -> Iterator[Page]:
    """A desktop-sized page that records what went wrong on it (``page.watched``)."""
    context, page = open_page(chromium, server, DESKTOP)
    yield page
    context.close()


@pytest.fixture
def inprocess_rounds(settings) -> Iterator[None]:
    """Accepted updates wake the service's in-process runner, as in the embedded default."""
    settings.FMA_AGGREGATOR_RUNNER = "inprocess"
    yield
    if runners._inprocess is not None:
        runners._inprocess.stop(timeout=120)
        runners._inprocess = None


def _experiment(developer: User, name: str) -> Experiment:
    return services.experiment_create(
        developer=developer,
        name=name,
        initial_model=dict(INITIAL),
        open_enrollment=True,
        round_policy={"policy": "require_x_updates", "x": 2},
        evaluation={"metrics": {"accuracy": {"goal": "max"}}},
    )


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/dashboard/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()


def test_without_login_the_pages_lead_to_the_login_form(page: Page, server: str):
    owner = User.objects.create_user("alice", password="alice-password")
    experiment = _experiment(owner, "alice-mnist")
    for path in ("/", "/dashboard/", f"/dashboard/experiments/{experiment.pk}/"):
        page.goto(path)
        assert page.url.startswith(f"{server}/dashboard/login/?next=")
        expect(page.get_by_label("Username")).to_be_visible()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("enter a correct username and password")
    assert "alice-mnist" not in page.content()
    page.watched.assert_clean()


def test_a_developer_watches_her_rounds_on_the_plot_and_publishes_one(
    page: Page, server: str, inprocess_rounds: None
):
    alice = User.objects.create_user("alice", password="alice-password")
    bob = User.objects.create_user("bob", password="bob-password")
    experiment = _experiment(alice, "alice-mnist")
    other = _experiment(bob, "bob-secret")

    log_in(page, "alice", "alice-password")
    experiments = page.get_by_role("table", name="Your experiments")
    expect(experiments.get_by_role("link", name="alice-mnist")).to_be_visible()
    expect(page.get_by_text("bob-secret")).to_have_count(0)
    assert page.goto(f"/dashboard/experiments/{other.pk}/").status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    page.watched.clear()  # the 404 was asked for

    page.goto(f"/dashboard/experiments/{experiment.pk}/")
    expect(page.get_by_role("heading", name="alice-mnist")).to_be_visible()
    page.evaluate("window.fmaSamePage = true")  # gone if the page reloads

    clients = [Client.enroll(server, experiment.pk, quiet=True) for _ in range(2)]
    # (accuracy reported by each client on its own data, its examples) for rounds 1, 2 and 3
    scores = [((0.50, 100), (0.70, 300)), ((0.60, 100), (0.90, 300)), ((0.70, 100), (0.95, 300))]
    for round_number, round_scores in enumerate(scores, start=1):
        for client, (accuracy, examples) in zip(clients, round_scores, strict=True):
            model = client.pull()
            trained = {name: array + accuracy for name, array in model.weights.items()}
            client.push(trained, num_examples=examples, metrics={"loss": 1 - accuracy})
        for client, (accuracy, examples) in zip(clients, round_scores, strict=True):
            client.wait_for_new_model(timeout=WAIT_MS / 1000, poll_interval=0.2)
            client.report_evaluation({"accuracy": accuracy}, examples)  # on its own held-out data
        # The round's point, once both clients' evaluations are in: their accuracies weighted 1:3.
        weighted = (round_scores[0][0] * 100 + round_scores[1][0] * 300) / 400
        page.wait_for_function(
            """([round, expected]) => {
                const cell = document.querySelector(
                    `[data-chart="evaluation-accuracy"] table.values tr[data-key="${round}"] td[data-value]`);
                return cell !== null && Math.abs(Number(cell.dataset.value) - expected) < 1e-9;
            }""",
            arg=[round_number, weighted],
        )
        expect(page.locator("[data-field=current-round]")).to_have_text(str(round_number))
    assert page.evaluate("window.fmaSamePage") is True
    expect(page.locator('[data-chart="training-loss"] table.values tr[data-key]')).to_have_count(3)
    expect(page.get_by_role("status").filter(has_text="Round 3 completed")).to_be_visible()
    # each chart drawn by uPlot, over the same rounds, its y axis labelled with its unit
    for key in ("evaluation-accuracy", "training-loss", "participation", "duration"):
        expect(page.locator(f'[data-chart="{key}"] .plot canvas')).to_have_count(1)
    expect(page.locator('[data-chart="duration"] .u-axis')).to_have_count(2)
    assert page.evaluate(
        """() => Array.from(document.querySelectorAll("figure.chart")).map(
            (f) => f.querySelectorAll("table.values tr[data-key]").length)"""
    ) == [3, 3, 3, 3]
    # hover: the legend shows the round's value under the pointer
    page.locator('[data-chart="participation"] .u-over').hover()
    expect(page.locator('[data-chart="participation"] .u-legend .u-value').first).not_to_have_text("--")
    # zoom: a drag across rounds 2 to 3 shows only them (the round under the chart's left edge is
    # then 2); a double-click shows every round again
    over = page.locator('[data-chart="participation"] .u-over')
    box = over.bounding_box()
    left_edge_round = page.locator('[data-chart="participation"] .u-legend .u-value').first

    def hover_left_edge() -> None:
        page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)

    hover_left_edge()
    expect(left_edge_round).to_have_text("1")
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    hover_left_edge()
    expect(left_edge_round).to_have_text("2")
    over.dblclick()
    hover_left_edge()
    expect(left_edge_round).to_have_text("1")
    # smoothing adds a smoothed line beside each raw one
    page.get_by_label("Smoothing").fill("0.6")
    expect(page.locator('[data-chart="training-loss"] .u-legend')).to_contain_text("loss (smoothed)")

    # Publish round 3 with the keyboard alone: type the version and press Enter.
    version = page.get_by_label("Version for round 3")
    version.focus()
    page.keyboard.type("3.0")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Round 3 is published as version 3.0.")).to_be_visible()
    expect(page.locator(".summary")).to_contain_text("version 3.0")
    artifact = ModelArtifact.objects.get(experiment=experiment, version="3.0")
    assert artifact.aggregate.round_number == 3

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "experiment-detail.png", full_page=True)
    page.get_by_role("link", name="Experiments", exact=True).click()
    row = page.get_by_role("row").filter(has_text="alice-mnist")
    expect(row).to_contain_text("collecting")
    page.screenshot(path=SCREENSHOTS / "experiments-list.png", full_page=True)
    page.watched.assert_clean()  # the charts and live updates ran under the CSP, without an error


def test_the_swagger_ui_and_the_admin_work_under_the_csp(page: Page, server: str):
    """They are Django's and drf-spectacular's pages, not the dashboard's: under the same policy
    the Swagger UI still draws the operations from the schema, and the admin still works."""
    User.objects.create_superuser("root", password="root-password")
    log_in(page, "root", "root-password")
    page.goto("/api/docs/")
    expect(page.get_by_text("/api/v1/models/{id}/upload_update/", exact=True).first).to_be_visible()
    page.goto("/admin/")
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    page.goto("/admin/auth/user/add/")
    page.locator("#id_username").fill("carol")
    page.locator("#id_password1").fill("correct-horse-battery-staple-42")
    page.locator("#id_password2").fill("correct-horse-battery-staple-42")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("was added successfully")).to_be_visible()
    page.watched.assert_clean()


def _with_rounds(
    make_experiment, enroll, submit, run_round, developer: User, name: str, rounds: int
) -> Experiment:
    """An experiment with ``rounds`` rounds of two clients, metrics, a score per round, a rejected
    update and a published version: every region of its page has rows."""
    experiment = make_experiment(developer, name, metrics_schema={"type": "object"})
    clients = [enroll(experiment), enroll(experiment)]
    for round_number in range(1, rounds + 1):
        for i, client in enumerate(clients):
            submit(
                experiment,
                client,
                float(i + round_number),
                num_examples=10 * (i + 1),
                metrics={"loss": 1 / round_number},
            )
        aggregate = run_round(experiment)
        evaluations.score_submit(
            aggregate=aggregate, client=clients[0], validation_results={"accuracy": 0.5 + round_number / 20}
        )
    with pytest.raises(Exception, match="schema"):
        submit(experiment, clients[0], 1.0, metrics=[1])
    services.aggregate_publish(aggregate=aggregate, version=f"{rounds}.0", user=developer)
    return experiment


def _with_noisy_clients(
    make_experiment, enroll, submit, run_round, developer: User
) -> tuple[Experiment, str]:
    """An experiment of two rounds of ten clients, the last two pushing noise (flagged as outliers), each
    client with metrics; and the uuid of a noisy client."""
    experiment = make_experiment(developer, "noisy", round_policy={"policy": "require_x_updates", "x": 10})
    clients = [enroll(experiment) for _ in range(10)]
    for round_number in (1, 2):
        for i, client in enumerate(clients):
            value = (-1) ** i * 30.0 * round_number if i >= 8 else round_number + i / 50
            submit(experiment, client, value, num_examples=10 + i, metrics={"loss": 1 / round_number})
        run_round(experiment)
    return experiment, str(clients[8].uuid)


def _sticking_out(page: Page) -> list[str]:
    """The elements whose right edge is past the screen's, outside the tables that scroll (the first 10)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll("body *"))
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest(".scroll"))
            .slice(0, 10)
            .map((e) => `${e.tagName.toLowerCase()}.${e.className}: ${Math.round(e.getBoundingClientRect().right)}`)"""
    )


def _axe_violations(page: Page) -> list[dict]:
    """axe-core's accessibility rules (WCAG 2.x A and AA, and its best practices) run on the page."""
    page.evaluate(AXE.read_text())
    return page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations.map(
            (v) => ({rule: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" "))}))"""
    )


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_fits_the_screen_has_no_error_and_passes_an_accessibility_check(
    chromium, server, size, make_experiment, enroll, submit, run_round
):
    if not AXE.exists():
        reason = f"{AXE} is missing; `make test` installs it (npm ci in api_service/)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    alice = User.objects.create_user("alice", password="alice-password")
    runs = [
        _with_rounds(make_experiment, enroll, submit, run_round, alice, name, rounds)
        for name, rounds in (("lr-0.1", 4), ("lr-0.01", 3))
    ]
    noisy, noisy_client = _with_noisy_clients(make_experiment, enroll, submit, run_round, alice)
    context, page = open_page(chromium, server, DESKTOP if size == "desktop" else PHONE)
    pages = {
        "login": "/dashboard/login/",
        "experiments": "/dashboard/",
        "experiment": f"/dashboard/experiments/{runs[0].pk}/",
        "compare": f"/dashboard/compare/?experiment={runs[0].pk}&experiment={runs[1].pk}&chart=training-loss",
        "clients": f"/dashboard/experiments/{noisy.pk}/clients/",
        "client": f"/dashboard/experiments/{noisy.pk}/clients/{noisy_client}/",
        "not-found": "/dashboard/nowhere/",
    }
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in pages.items():
        if name == "experiments":
            log_in(page, "alice", "alice-password")
        answer = page.goto(path)
        assert answer.status == (404 if name == "not-found" else 200), name
        charts = page.locator("figure.chart")
        expect(page.locator("figure.chart .plot canvas")).to_have_count(charts.count())
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} is {overflow} px wider than the {size} screen: {_sticking_out(page)}"
        for chart in charts.all():  # no chart is cut: each canvas fits inside its figure
            assert chart.evaluate(
                "(f) => f.querySelector('canvas').getBoundingClientRect().right <= f.getBoundingClientRect().right + 1"
            ), name
        assert _axe_violations(page) == [], name
        page.screenshot(path=SCREENSHOTS / f"{name}-{size}.png", full_page=True)
        if name == "not-found":
            page.watched.clear()  # the 404 was asked for
        page.watched.assert_clean()
    context.close()


def test_the_admin_lists_show_every_column_at_1440_px(
    page: Page, server, make_experiment, enroll, submit, run_round
):
    root = User.objects.create_superuser("root", password="root-password")
    _with_rounds(make_experiment, enroll, submit, run_round, root, "mnist", 2)
    log_in(page, "root", "root-password")
    for model in (
        "experiment",
        "client",
        "modelupdate",
        "modelaggregate",
        "modelartifact",
        "evaluation",
        "enrollment",
        "event",
    ):
        page.goto(f"/admin/fma_django/{model}/")
        results = page.locator("#changelist .results")
        assert results.count() == 1, f"the {model} list shows no rows"
        hidden = results.evaluate("(e) => e.scrollWidth - e.clientWidth")
        assert hidden <= 0, f"the {model} list hides {hidden} px behind a scroll bar"
        expect(page.locator(f'a[href="/admin/fma_django/{model}/add/"]')).to_have_count(
            1 if model in ("experiment", "client", "enrollment") else 0
        )
    page.watched.assert_clean()


def test_a_region_being_edited_waits_and_the_status_line_follows_the_summary(
    page: Page, server, make_experiment, enroll, submit, run_round
):
    """A poll that skips a region (a version typed, not yet published) leaves its cursor where it
    was, so the next poll after the edit brings its rows; the status line names the round the
    summary on the page shows, never one a skipped region would have shown."""
    alice = User.objects.create_user("alice", password="alice-password")
    experiment = _with_rounds(make_experiment, enroll, submit, run_round, alice, "mnist", 1)
    log_in(page, "alice", "alice-password")
    page.goto(f"/dashboard/experiments/{experiment.pk}/")
    page.get_by_label("Version for round 1").fill("draft")
    client = experiment.enrollments.first().client
    submit(experiment, client, 5.0, metrics={"loss": 0.125})
    run_round(experiment)
    expect(page.locator("[data-field=current-round]")).to_have_text("2")
    expect(page.get_by_role("status").filter(has_text="Round 2 completed")).to_be_visible()
    expect(page.locator('[data-live="rounds"] tr[data-key="2"]')).to_have_count(1)
    expect(page.locator('[data-chart="training-loss"] table.values tr[data-key="2"]')).to_have_count(1)
    lineage = page.locator('[data-live="lineage"] tbody > tr')
    assert lineage.count() == 1  # still being edited: round 2 waits
    page.get_by_label("Version for round 1").fill("")
    page.get_by_role("heading", name="mnist").click()  # focus leaves the region
    expect(lineage).to_have_count(2)
    expect(lineage.first.get_by_role("rowheader")).to_have_text("2")  # newest first
    page.watched.assert_clean()
