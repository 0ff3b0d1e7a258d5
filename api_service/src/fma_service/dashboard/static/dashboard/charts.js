// Draws every chart of the page with uPlot from the table the server rendered under it (the table
// stays: it is what screen readers and pages without JavaScript get). Axes are labelled with their
// units, every chart of a page spans the same rounds, counts start at zero with whole-number ticks;
// drag to zoom, double-click to zoom out, hover for values, and an exponential moving average
// (TensorBoard's smoothing) from the page's slider. `window.fmaCharts.draw()` redraws after the
// live updates put new rows in the tables.
"use strict";

(() => {
  const COLORS = ["#0b4f9c", "#b35900", "#1d6b2f", "#8a1f8a", "#a11a1a", "#2f6f7a", "#5a5a00", "#4a4a4a"];
  const HEIGHT = 240;
  const slider = document.getElementById("smoothing");
  const sliderValue = document.getElementById("smoothing-value");
  const plots = new Map(); // figure → {plot, smoothed}

  // A chart's data from its table: the rounds (data-key of each row) and a column per series.
  const read = (figure) => {
    const names = Array.from(figure.querySelectorAll("table.values thead th")).slice(1).map((th) => th.textContent.trim());
    const rows = Array.from(figure.querySelectorAll("table.values > tbody > tr[data-key]"))
      .map((tr) => ({
        round: Number(tr.dataset.key),
        values: Array.from(tr.querySelectorAll("td")).map((td) =>
          td.dataset.value === undefined ? null : Number(td.dataset.value),
        ),
      }))
      .sort((a, b) => a.round - b.round);
    return {
      names,
      rounds: rows.map((row) => row.round),
      columns: names.map((_, i) => rows.map((row) => row.values[i] ?? null)),
    };
  };

  // Exponential moving average over the values present, debiased at the start as TensorBoard does.
  const smooth = (values, weight) => {
    let last = 0;
    let count = 0;
    return values.map((value) => {
      if (value === null || !Number.isFinite(value)) {
        return null;
      }
      last = last * weight + (1 - weight) * value;
      count += 1;
      return last / (1 - weight ** count);
    });
  };

  // Every chart of the page spans the same rounds: from the first to the last of any of them.
  const roundSpan = () => {
    const rounds = Array.from(document.querySelectorAll("figure.chart table.values > tbody > tr[data-key]")).map((tr) =>
      Number(tr.dataset.key),
    );
    if (rounds.length === 0) {
      return [0, 1];
    }
    const low = Math.min(...rounds);
    const high = Math.max(...rounds);
    return low === high ? [low - 0.5, high + 0.5] : [low, high];
  };

  const wholeSteps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000, 1000000];

  const options = (figure, data, weight, width) => {
    const fromZero = figure.hasAttribute("data-from-zero");
    const series = [{ label: "round" }];
    data.names.forEach((name, i) => {
      const color = COLORS[i % COLORS.length];
      if (weight > 0) {
        series.push({ label: `${name} (raw)`, stroke: `${color}55`, width: 1, points: { show: false } });
        series.push({ label: `${name} (smoothed)`, stroke: color, width: 2.5 });
      } else {
        series.push({ label: name, stroke: color, width: 2.5, points: { size: 6, fill: color } });
      }
    });
    return {
      width,
      height: HEIGHT,
      series,
      cursor: { drag: { x: true, y: false } },
      scales: {
        // unzoomed (uPlot asks with the chart's own first and last round): the page's whole span;
        // zoomed (a drag asks with the selected rounds): what was selected
        x: {
          time: false,
          range: (u, min, max) =>
            min === u.data[0][0] && max === u.data[0][u.data[0].length - 1] ? roundSpan() : [min, max],
        },
        y: fromZero ? { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } : {},
      },
      axes: [
        { label: "round", incrs: wholeSteps, values: (_u, ticks) => ticks.map(String) },
        {
          label: figure.dataset.yLabel,
          size: 60,
          incrs: figure.hasAttribute("data-integer") ? wholeSteps : undefined,
        },
      ],
    };
  };

  const columnsFor = (data, weight) =>
    weight > 0 ? data.columns.flatMap((column) => [column, smooth(column, weight)]) : data.columns;

  const drawOne = (figure, weight) => {
    const box = figure.querySelector(".plot");
    const empty = figure.querySelector(".no-data");
    const data = read(figure);
    const hasData = data.rounds.length > 0;
    box.hidden = !hasData;
    empty.hidden = hasData;
    const known = plots.get(figure);
    if (!hasData) {
      return;
    }
    const aligned = [data.rounds, ...columnsFor(data, weight)];
    if (known && known.weight === weight && known.series === data.names.length && box.contains(known.plot.root)) {
      known.plot.setData(aligned, !known.zoomed);
      return;
    }
    known?.plot.destroy();
    const entry = { weight, series: data.names.length, zoomed: false };
    const settings = options(figure, data, weight, Math.max(box.clientWidth, 200));
    // zoomed in (a drag) or not (a double-click): a zoomed chart keeps its rounds when rows arrive
    settings.hooks = {
      setScale: [
        (u, key) => {
          if (key === "x") {
            const [low, high] = roundSpan();
            entry.zoomed = u.scales.x.min > low || u.scales.x.max < high;
          }
        },
      ],
    };
    entry.plot = new uPlot(settings, aligned, box);
    plots.set(figure, entry);
  };

  const weight = () => (slider ? Number(slider.value) : 0);

  const draw = () => {
    for (const [figure, entry] of plots) {
      if (!document.contains(figure)) {
        entry.plot.destroy();
        plots.delete(figure);
      }
    }
    document.querySelectorAll("figure.chart").forEach((figure) => drawOne(figure, weight()));
  };

  if (typeof uPlot === "undefined") {
    return; // the library did not load: the tables remain
  }
  document.querySelectorAll(".chart-controls").forEach((controls) => { controls.hidden = false; });
  slider?.addEventListener("input", () => {
    sliderValue.textContent = slider.value;
    draw();
  });
  const resize = new ResizeObserver(() => {
    for (const [figure, entry] of plots) {
      const width = figure.querySelector(".plot").clientWidth;
      if (width > 0 && width !== entry.plot.width) {
        entry.plot.setSize({ width, height: HEIGHT });
      }
    }
  });
  resize.observe(document.querySelector("main"));
  window.fmaCharts = { draw };
  draw();
})();
