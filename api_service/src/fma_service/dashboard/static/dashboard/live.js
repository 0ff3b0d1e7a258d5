// Keeps an experiment's page current while rounds run. Each region keeps the cursor it was rendered
// at (data-cursor) and every poll sends them back; the server answers only the regions that changed,
// and of a table or the charts only the new or changed rows, which are put in place by their key
// (data-key; a lineage row's data-aggregate). A region being edited (focus inside, or a version
// typed but not yet published) is left alone with its old cursor, so the next poll brings it again.
// The status line speaks of the round the summary on the page shows, never of one it skipped.
"use strict";

(() => {
  const root = document.getElementById("live");
  if (!root) {
    return;
  }
  const url = root.dataset.liveUrl;
  const period = Number(root.dataset.pollSeconds || "2") * 1000;
  const status = document.getElementById("live-status");
  const regions = new Map(Array.from(root.querySelectorAll("[data-live]")).map((r) => [r.dataset.live, r]));
  // How each table's rows are ordered, and how many a region keeps (the problems: the newest 50).
  const NEWEST_FIRST = new Set(["problems", "lineage"]);
  const KEEP = { problems: 50 };
  const shownRound = () => root.querySelector("[data-field=current-round]")?.textContent.trim();
  let round = shownRound();

  const busy = (region) =>
    region.contains(document.activeElement) ||
    Array.from(region.querySelectorAll("input:not([type=hidden])")).some((input) => input.value !== "");

  const openDetails = (element) =>
    new Set(Array.from(element.querySelectorAll("details[open] > summary")).map((s) => s.textContent));

  const keyOf = (row) => Number(row.dataset.key ?? row.dataset.aggregate);
  const keyed = (row) => row.dataset.key !== undefined || row.dataset.aggregate !== undefined;

  const parse = (html) => {
    const template = document.createElement("template");
    template.innerHTML = html;
    return template.content;
  };

  // Put each keyed row of `incoming` (a tbody) into `tbody`: replace the row with its key, or insert
  // it in key order; the placeholder row of an empty table goes.
  const upsertRows = (tbody, incoming, newestFirst, keep) => {
    const rows = Array.from(incoming.querySelectorAll(":scope > tr")).filter(keyed);
    if (rows.length === 0) {
      return;
    }
    tbody.querySelectorAll(":scope > tr").forEach((tr) => {
      if (!keyed(tr)) {
        tr.remove();
      }
    });
    for (const row of rows) {
      const key = keyOf(row);
      const existing = Array.from(tbody.children).find((tr) => keyOf(tr) === key);
      if (existing) {
        const open = openDetails(existing);
        row.querySelectorAll("details > summary").forEach((s) => {
          if (open.has(s.textContent)) {
            s.parentElement.open = true;
          }
        });
        existing.replaceWith(row);
        continue;
      }
      const after = Array.from(tbody.children).find((tr) => (newestFirst ? keyOf(tr) < key : keyOf(tr) > key));
      tbody.insertBefore(row, after ?? null);
    }
    if (keep) {
      Array.from(tbody.children).slice(keep).forEach((tr) => tr.remove());
    }
  };

  // The charts region: a chart new to the page goes in among the others (metric charts by key,
  // before participation and duration); a known chart takes its new rows.
  const upsertCharts = (region, fragment) => {
    const container = region.querySelector(".charts");
    for (const figure of fragment.querySelectorAll("figure[data-chart]")) {
      const key = figure.dataset.chart;
      const existing = container.querySelector(`figure[data-chart="${CSS.escape(key)}"]`);
      if (existing) {
        upsertRows(existing.querySelector("table.values > tbody"), figure.querySelector("table.values > tbody"), false);
        continue;
      }
      container.querySelector(".no-metrics")?.remove();
      const after = Array.from(container.querySelectorAll("figure[data-chart]")).find(
        (f) => f.hasAttribute("data-fixed") || f.dataset.chart > key,
      );
      container.insertBefore(figure, after ?? null);
    }
    window.fmaCharts?.draw();
  };

  const apply = (name, region, answer) => {
    const fragment = parse(answer.html);
    if (!answer.rows) {
      const open = openDetails(region);
      region.replaceChildren(fragment);
      region.querySelectorAll("details > summary").forEach((s) => {
        if (open.has(s.textContent)) {
          s.parentElement.open = true;
        }
      });
      if (name === "plots") {
        window.fmaCharts?.draw();
      }
    } else if (name === "plots") {
      upsertCharts(region, fragment);
    } else {
      upsertRows(region.querySelector("tbody"), fragment.querySelector("tbody"), NEWEST_FIRST.has(name), KEEP[name]);
    }
    region.dataset.cursor = answer.cursor;
  };

  const query = () =>
    "?" +
    Array.from(regions, ([name, region]) => `${name}=${encodeURIComponent(region.dataset.cursor || "")}`).join("&");

  const poll = async () => {
    if (document.hidden) {
      window.setTimeout(poll, period);
      return;
    }
    try {
      const response = await fetch(url + query(), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.redirected || !response.ok) {
        throw new Error(response.redirected ? "you are logged out" : `the server answered ${response.status}`);
      }
      const data = await response.json();
      for (const [name, answer] of Object.entries(data.regions)) {
        const region = regions.get(name);
        if (region && !busy(region)) {
          apply(name, region, answer);
        }
      }
      const now = shownRound();
      if (now !== round) {
        status.textContent = `Round ${now} completed; the page is up to date.`;
        round = now;
      }
    } catch (error) {
      status.textContent = `Could not refresh (${error.message}); trying again.`;
    }
    window.setTimeout(poll, period);
  };
  window.setTimeout(poll, period);
})();
