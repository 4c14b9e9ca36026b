/* A line chart of daily counts as inline SVG: no library, no CDN.
   IngestTimeline.draw(container, days, series): days = ["2017-01-01", ...]; series = [{name, values}]
   with one value per day. Each line has a title (hover) and the legend repeats its colour. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  var W = 640, H = 220, LEFT = 44, RIGHT = 8, TOP = 10, BOTTOM = 26;

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (value <= 5) return 5;
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    return Math.ceil(value / step) * step;
  }

  function draw(container, days, series) {
    container.textContent = "";
    if (!days.length || !series.length) return;
    var top = niceMax(Math.max.apply(null, series.map(function (s) { return Math.max.apply(null, s.values); })));
    var x = function (i) { return LEFT + (days.length === 1 ? 0 : i * (W - LEFT - RIGHT) / (days.length - 1)); };
    var y = function (v) { return TOP + (H - TOP - BOTTOM) * (1 - v / top); };
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "class": "timeline",
                          "aria-label": "articles a day, " + days[0] + " to " + days[days.length - 1] });
    [0, top / 2, top].forEach(function (v) {
      svg.appendChild(el("line", { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), "class": "grid" }));
      svg.appendChild(el("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end", "class": "axis" },
                         String(v % 1 ? v.toFixed(1) : v)));
    });
    svg.appendChild(el("text", { x: LEFT, y: H - 6, "class": "axis" }, days[0]));
    svg.appendChild(el("text", { x: W - RIGHT, y: H - 6, "text-anchor": "end", "class": "axis" },
                       days[days.length - 1]));
    var legend = document.createElement("ul");
    legend.className = "legend";
    series.forEach(function (s, n) {
      var colour = COLOURS[n % COLOURS.length];
      var points = s.values.map(function (v, i) { return x(i).toFixed(1) + "," + y(v).toFixed(1); }).join(" ");
      var line = el("polyline", { points: points, fill: "none", stroke: colour, "stroke-width": 2,
                                  "data-entity": s.name });
      line.appendChild(el("title", {}, s.name + ": " + s.values.reduce(function (a, b) { return a + b; }, 0) +
                                     " articles in the window"));
      svg.appendChild(line);
      var item = document.createElement("li");
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
    container.appendChild(svg);
    container.appendChild(legend);
  }

  window.IngestTimeline = { draw: draw };
})();
