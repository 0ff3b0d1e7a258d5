// Keeps an experiment's page current while rounds run: polls the page's JSON endpoint and, when
// anything changed, swaps in the freshly rendered regions. A region being edited (focus inside,
// or a version typed but not yet published) is left alone until the next poll.
"use strict";

(() => {
  const root = document.getElementById("live");
  if (!root) {
    return;
  }
  const url = root.dataset.liveUrl;
  const period = Number(root.dataset.pollSeconds || "2") * 1000;
  const status = document.getElementById("live-status");
  const regions = Array.from(root.querySelectorAll("[data-live]"));
  regions.forEach((region) => {
    region.dataset.stamp = root.dataset.stamp;
  });
  let round = root.querySelector("[data-field=current-round]")?.textContent.trim();

  const busy = (region) =>
    region.contains(document.activeElement) ||
    Array.from(region.querySelectorAll("input:not([type=hidden])")).some((input) => input.value !== "");

  const openDetails = (region) =>
    new Set(Array.from(region.querySelectorAll("details[open] > summary")).map((s) => s.textContent));

  const replace = (region, html) => {
    const open = openDetails(region);
    region.innerHTML = html;
    region.querySelectorAll("details > summary").forEach((summary) => {
      if (open.has(summary.textContent)) {
        summary.parentElement.open = true;
      }
    });
  };

  // Ask for the regions only when something changed since every region was last rendered.
  const since = () => {
    const stamps = new Set(regions.map((region) => region.dataset.stamp));
    return stamps.size === 1 ? `?since=${encodeURIComponent(regions[0].dataset.stamp)}` : "";
  };

  const poll = async () => {
    if (document.hidden) {
      window.setTimeout(poll, period);
      return;
    }
    try {
      const response = await fetch(url + since(), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.redirected || !response.ok) {
        throw new Error(response.redirected ? "you are logged out" : `the server answered ${response.status}`);
      }
      const data = await response.json();
      for (const region of regions) {
        const html = data.sections[region.dataset.live];
        if (html !== undefined && region.dataset.stamp !== data.stamp && !busy(region)) {
          replace(region, html);
          region.dataset.stamp = data.stamp;
        }
      }
      const now = String(data.current_round);
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
