/* Forward Pass, annotated: renders the Vega-Lite charts beside the story, and the page's
 * reading mode.
 *
 * Each chart is a <div class="fp-chart" data-spec='…' data-name="…" data-describedby="…">
 * written by the MkDocs plugin. Specs live in an attribute, not in <script
 * type="application/json">, because Material's instant navigation re-runs inline scripts and
 * drops their type.
 *
 * - Every chart is first a static image drawn at build time (tracegen/static_charts.py);
 *   only interactive ones have a spec here. Such a chart is drawn by Vega when the reader
 *   reaches for it: a pointer moving over it, a tap or a click on it, or its "Explore this
 *   chart" button (the keyboard's way; focus then moves to its first control). The Vega
 *   bundle (served by the site itself, 0.9 MB, 0.3 MB gzipped: more than the rest of the
 *   page) is downloaded, not run, when a pointer enters an interactive chart or its button
 *   takes focus, so a reader who only reads never fetches it. Why not draw on scrolling: on
 *   a phone-speed CPU (4x slower)
 *   running the bundle takes ~0.4 s and a first chart ~1 s in one task each, which would
 *   stall scrolling; a static image costs nothing to scroll past. Charts draw one at a time,
 *   yielding to the page between them.
 * - Before drawing, a spec is fitted to its panel (`prepare`): views side by side are stacked
 *   and facets wrapped when the panel is narrow, fixed view widths are scaled to the panel,
 *   chart text is at least 11 px (12 px for titles), legend labels are never cut, and a point
 *   selection (picking a position) gets a slider so that the keyboard can pick too. A chart
 *   that still cannot fit (a long prompt laid out in characters) scrolls sideways, with a
 *   visible cue, and is focusable so that the keyboard can scroll it.
 * - Colours come from Material's CSS variables, so charts follow the light/dark palette; a
 *   palette switch re-renders every chart already drawn, a resize every multi-view chart.
 * - The drawn <svg>/<canvas> is the image (role="img", the short name, the caption as its
 *   description); the controls vega-embed adds sit beside it, not inside an image.
 * - Works with instant navigation (document$) and without it (file://, where document$
 *   never fires): init() is idempotent and runs on both.
 *
 * State for tests and styling: data-fp-state = static (its image, not drawn yet) | waiting |
 * rendering | rendered | error, and
 * data-fp-scheme = the palette the chart was last drawn in.
 */
(function () {
  "use strict";
  if (window.forwardPass) return; // the script was included twice

  var bundleUrl = new URL("vega-bundle.js", document.currentScript.src).href;
  var READING_KEY = "forward-pass:reading";
  var MIN_TEXT = 11; // px: chart text (labels, marks, legends)
  var MIN_TITLE = 12; // px: axis, legend and chart titles
  var NARROW = 600; // px: below this panel width, views side by side are stacked
  var entries = new Set();
  var queue = [];
  var pumping = false;
  var bundle = null;

  // Download the runtime without running it (the script element later gets the same copy).
  var prefetched = false;
  function prefetchVega() {
    if (prefetched || window.vegaEmbed) return;
    prefetched = true;
    var link = document.createElement("link");
    link.rel = "preload";
    link.as = "script";
    link.href = bundleUrl;
    document.head.appendChild(link);
  }

  function loadVega() {
    if (window.vegaEmbed) return Promise.resolve();
    if (!bundle) {
      bundle = new Promise(function (resolve, reject) {
        var script = document.createElement("script");
        script.src = bundleUrl;
        script.onload = resolve;
        script.onerror = function () {
          bundle = null;
          reject(new Error("forward-pass: cannot load " + bundleUrl));
        };
        document.head.appendChild(script);
      });
    }
    return bundle;
  }

  function scheme() {
    return document.body.getAttribute("data-md-color-scheme") || "default";
  }

  // A Vega config from the theme's own colours and the site's type sizes; the spec's config
  // still wins where it has one (`prepare` raises sizes a spec sets below these).
  function themeConfig(width) {
    var css = getComputedStyle(document.body);
    function v(name, fallback) {
      return css.getPropertyValue(name).trim() || fallback;
    }
    var fg = v("--md-default-fg-color", "#222");
    var light = v("--md-default-fg-color--light", "#555");
    var lighter = v("--md-default-fg-color--lighter", "#888");
    var lightest = v("--md-default-fg-color--lightest", "#ddd");
    var axis = {labelColor: light, titleColor: fg, domainColor: lighter, tickColor: lighter,
                gridColor: lightest, labelFontSize: MIN_TEXT, titleFontSize: MIN_TITLE};
    return {
      background: v("--md-default-bg-color", "#fff"),
      font: css.fontFamily,
      // The drawn chart is one image with a name and a description (set after drawing);
      // hundreds of marks each read aloud would bury them.
      aria: false,
      view: {stroke: lightest},
      axis: axis,
      // labelLimit 0: legend labels are never cut ("bigram-l…").
      // A colour ramp no longer than a narrow panel has room for beside its title.
      legend: {labelColor: light, titleColor: fg, labelFontSize: MIN_TEXT,
               titleFontSize: MIN_TITLE, labelLimit: 0, titleLimit: 0,
               gradientLength: Math.max(80, Math.min(200, width - 150))},
      header: {labelColor: fg, titleColor: fg, labelFontSize: MIN_TITLE,
               titleFontSize: MIN_TITLE},
      title: {color: fg, subtitleColor: light, fontSize: 13, subtitleFontSize: MIN_TITLE},
      text: {color: fg, fontSize: MIN_TEXT},
      rule: {color: light},
    };
  }

  // --- fitting a spec to its panel -----------------------------------------------------------

  function isObject(x) {
    return x !== null && typeof x === "object" && !Array.isArray(x);
  }

  function isMulti(spec) {
    return ["hconcat", "vconcat", "concat", "facet", "repeat"].some(function (k) {
      return k in spec;
    }) || ["row", "column", "facet"].some(function (k) {
      return isObject(spec.encoding) && k in spec.encoding;
    });
  }

  // A view laid out in characters by its panel (a prompt as a token strip: text marks at
  // fixed x positions, no x axis): scaling it would overlap its text, so it keeps its width.
  function laidOutText(view) {
    var layers = view.layer || [view];
    return layers.some(function (layer) {
      var mark = isObject(layer.mark) ? layer.mark.type : layer.mark;
      var x = layer.encoding && layer.encoding.x;
      return mark === "text" && x && x.axis === null && x.scale && x.scale.domain;
    });
  }

  // Chart text at least MIN_TEXT px (titles MIN_TITLE); a token strip grows with its text.
  function legibleText(node, view, grown) {
    if (Array.isArray(node)) {
      node.forEach(function (item) { legibleText(item, view, grown); });
      return;
    }
    if (!isObject(node)) return;
    if (typeof node.width === "number") view = node;
    var mark = node.mark;
    if (isObject(mark) && typeof mark.fontSize === "number" && mark.fontSize < MIN_TEXT) {
      if (view && laidOutText(view) && !grown.has(view)) {
        view.width = Math.ceil(view.width * MIN_TEXT / mark.fontSize);
        grown.add(view);
      }
      mark.fontSize = MIN_TEXT;
    }
    Object.keys(node).forEach(function (key) {
      var value = node[key];
      if (key === "data" || key === "datasets") return;
      if (key === "labelFontSize" && typeof value === "number" && value < MIN_TEXT) {
        node[key] = MIN_TEXT;
      } else if (key === "titleFontSize" && typeof value === "number" && value < MIN_TITLE) {
        node[key] = MIN_TITLE;
      } else if (key === "legend" && isObject(value) && "labelLimit" in value) {
        delete value.labelLimit;
      } else {
        legibleText(value, view, grown);
      }
    });
  }

  // Every value of `field` in the spec's inline data (top-level datasets or data.values).
  function valuesOf(spec, field) {
    var seen = new Set();
    function rows(list) {
      if (!Array.isArray(list)) return;
      list.forEach(function (row) {
        if (isObject(row) && typeof row[field] === "number") seen.add(row[field]);
      });
    }
    Object.keys(spec.datasets || {}).forEach(function (name) { rows(spec.datasets[name]); });
    (function walk(node) {
      if (Array.isArray(node)) { node.forEach(walk); return; }
      if (!isObject(node)) return;
      if (isObject(node.data) && node.data.values) rows(node.data.values);
      Object.keys(node).forEach(function (k) { if (k !== "datasets") walk(node[k]); });
    })(spec);
    return Array.from(seen).sort(function (a, b) { return a - b; });
  }

  // The title a tooltip gives a field ("position"), to name the slider that picks it.
  function fieldTitle(spec, field) {
    var found = null;
    (function walk(node) {
      if (found || !node || typeof node !== "object") return;
      if (isObject(node) && node.field === field && typeof node.title === "string") {
        found = node.title;
        return;
      }
      Object.keys(node).forEach(function (k) { if (k !== "datasets" && k !== "data") walk(node[k]); });
    })(spec);
    return found || field;
  }

  // A point selection over one numeric field (a click picks a position in a grid) also
  // gets a slider, so that picking works from the keyboard (arrow keys) and says its value.
  function keyboardPicking(spec) {
    (function walk(node) {
      if (Array.isArray(node)) { node.forEach(walk); return; }
      if (!isObject(node)) return;
      (node.params || []).forEach(function (param) {
        var select = param.select;
        var type = isObject(select) ? select.type : select;
        var fields = isObject(select) ? select.fields : null;
        if (type !== "point" || param.bind || !fields || fields.length !== 1) return;
        var values = valuesOf(spec, fields[0]);
        if (values.length < 2) return;
        var integers = values.every(function (x) { return Math.round(x) === x; });
        param.bind = {input: "range", min: values[0], max: values[values.length - 1],
                      step: integers ? 1 : (values[1] - values[0]),
                      name: "pick a " + fieldTitle(spec, fields[0]) + " "};
      });
      Object.keys(node).forEach(function (k) {
        if (k !== "data" && k !== "datasets" && k !== "params") walk(node[k]);
      });
    })(spec);
  }

  // Widths of the plots in the widest row of views, and the number of views in it.
  function rowWidth(node) {
    if (!isObject(node)) return {plots: 0, views: 0};
    if (node.hconcat) {
      return node.hconcat.map(rowWidth).reduce(function (a, b) {
        return {plots: a.plots + b.plots, views: a.views + b.views};
      }, {plots: 0, views: 0});
    }
    if (node.vconcat || node.layer) {
      return (node.vconcat || node.layer).map(rowWidth).reduce(function (a, b) {
        return a.plots >= b.plots ? a : b;
      }, {plots: typeof node.width === "number" ? node.width : 0, views: node.width ? 1 : 0});
    }
    if (node.facet && node.spec) {
      var inner = rowWidth(node.spec);
      var columns = node.columns || (node.facet.column ? 3 : 1);
      return {plots: inner.plots * columns, views: inner.views * columns};
    }
    return {plots: typeof node.width === "number" ? node.width : 0, views: 1};
  }

  // Legends below a chart list their entries in one column when the panel is narrow (the
  // panels' own expression for it is not evaluated again once the legend is laid out).
  function narrowLegends(node, width) {
    if (Array.isArray(node)) {
      node.forEach(function (item) { narrowLegends(item, width); });
      return;
    }
    if (!isObject(node)) return;
    Object.keys(node).forEach(function (key) {
      var value = node[key];
      if (key === "data" || key === "datasets") return;
      if (key === "legend" && isObject(value)) {
        // Bottom legends run their entries in one row unless told otherwise.
        var below = value.orient === "bottom" || value.orient === "top" || "columns" in value;
        if (below && width < 480) value.columns = 1;
        if (typeof value.gradientLength === "number") {
          value.gradientLength = Math.max(80, Math.min(value.gradientLength, width - 150));
        }
      } else {
        narrowLegends(value, width);
      }
    });
  }

  // A title as lines of at most `chars` characters, broken at spaces.
  function wrapText(text, chars) {
    var lines = [];
    text.split(" ").forEach(function (word) {
      var last = lines.length - 1;
      if (last >= 0 && lines[last].length + 1 + word.length <= chars) lines[last] += " " + word;
      else lines.push(word);
    });
    return lines.length > 1 ? lines : text;
  }

  // Titles of the views inside a multi-view chart break into lines in a narrow panel (13 px
  // bold: about 7.5 px a character).
  function wrapTitles(node, width) {
    if (Array.isArray(node)) {
      node.forEach(function (item) { wrapTitles(item, width); });
      return;
    }
    if (!isObject(node)) return;
    var chars = Math.max(16, Math.floor((width - 20) / 7.5));
    if (typeof node.title === "string" && node.title.length > chars) {
      node.title = {text: wrapText(node.title, chars)};
    } else if (isObject(node.title) && typeof node.title.text === "string" &&
               node.title.text.length > chars) {
      node.title.text = wrapText(node.title.text, chars);
    }
    Object.keys(node).forEach(function (key) {
      if (key !== "data" && key !== "datasets" && key !== "encoding") wrapTitles(node[key], width);
    });
  }

  // Multi-view charts for a panel `width` px wide: stacked or wrapped when narrow, then every
  // fixed view width scaled by `scale` (token strips excepted).
  function reflow(node, width, scale) {
    if (Array.isArray(node)) {
      node.forEach(function (item) { reflow(item, width, scale); });
      return;
    }
    if (!isObject(node)) return;
    if (node.hconcat && width < NARROW) {
      node.vconcat = node.hconcat;
      delete node.hconcat;
    }
    if (isObject(node.facet) && node.facet.row && !node.facet.column && width < NARROW) {
      // Row labels beside each row take the width the plots need: put them above instead
      // (a wrapped facet in one column has its labels on top).
      node.facet = node.facet.row;
      node.columns = 1;
    }
    if (isObject(node.facet) && node.facet.column && !node.facet.row && width < NARROW) {
      // A facet in columns becomes a wrapped facet: as many columns as the panel holds.
      var inner = rowWidth(node.spec).plots * scale || 1;
      node.facet = node.facet.column;
      node.columns = Math.max(1, Math.floor((width - 90) / (inner + 50)));
    }
    if (width < NARROW && isObject(node.encoding)) {
      // A legend beside a narrow chart takes the plot's width; below it, it takes height.
      ["color", "fill", "stroke", "size", "opacity"].forEach(function (channel) {
        var def = node.encoding[channel];
        if (!isObject(def) || !def.field || def.legend === null) return;
        var legend = isObject(def.legend) ? def.legend : {};
        if (!legend.orient || legend.orient === "right" || legend.orient === "left") {
          def.legend = Object.assign({}, legend, {orient: "bottom"});
        }
      });
    }
    if (typeof node.width === "number" && !laidOutText(node)) {
      var scaled = Math.max(40, Math.floor(node.width * scale));
      // Marks placed at a pixel position in the view (an annotation at its right edge) move
      // with its width.
      (node.layer || [node]).forEach(function (layer) {
        ["x", "x2"].forEach(function (channel) {
          var def = layer.encoding && layer.encoding[channel];
          if (isObject(def) && typeof def.value === "number") {
            def.value = Math.round(def.value * scaled / node.width);
          }
        });
      });
      node.width = scaled;
    }
    Object.keys(node).forEach(function (key) {
      if (key !== "data" && key !== "datasets" && key !== "encoding") reflow(node[key], width, scale);
    });
  }

  function prepare(entry, width) {
    var spec = JSON.parse(entry.el.getAttribute("data-spec"));
    // Vega names the drawn chart from its description; the plugin gives the short name.
    spec.description = entry.el.getAttribute("data-name") || spec.description;
    legibleText(spec, null, new Set());
    keyboardPicking(spec);
    narrowLegends(spec, width);
    if (isMulti(spec)) {
      // Each legend beside its own view, not beside the whole chart (a shared legend of
      // stacked views sits level with whichever view happens to be first).
      spec.resolve = spec.resolve || {};
      spec.resolve.legend = Object.assign({color: "independent", fill: "independent",
                                           stroke: "independent"}, spec.resolve.legend);
      wrapTitles(spec, width);
      // The first scale is a guess at what axes and legends take beside the plots; once drawn,
      // the chart's measured overhead replaces it (entry.overhead, see fit()).
      var probe = JSON.parse(JSON.stringify(spec));
      reflow(probe, width, 1);
      var row = rowWidth(probe);
      var overhead = entry.overhead != null ? entry.overhead : 70 * Math.max(1, row.views) + 90;
      var scale = row.plots ? Math.min(1, (width - overhead) / row.plots) : 1;
      reflow(spec, width, Math.max(0.2, scale));
      entry.plots = rowWidth(spec).plots;
    }
    return spec;
  }

  // --- drawing ------------------------------------------------------------------------------

  function drawnElement(el) {
    var host = el.querySelector(".fp-vega");
    return host && host.querySelector(":scope > svg, :scope > canvas");
  }

  function drawnWidth(el) {
    var drawn = drawnElement(el);
    if (!drawn) return 0;
    var laid = drawn.tagName === "svg" && drawn.width.baseVal ? drawn.width.baseVal.value : 0;
    return Math.max(drawn.getBoundingClientRect().width, laid);
  }

  function panelWidth(el) {
    return el.clientWidth || el.parentElement.clientWidth;
  }

  function embed(entry, width) {
    var el = entry.el;
    var spec = prepare(entry, width);
    var host = el.querySelector(".fp-vega") || el; // vega-embed relabels its host
    // Every chart fits its panel: a minimum width a panel asks for (it would scroll) is
    // dropped; the fixed-width fallback image is what keeps it.
    host.style.minWidth = "";
    return window.vegaEmbed(host, spec, {
      renderer: el.getAttribute("data-renderer") === "canvas" ? "canvas" : "svg",
      actions: false,
      config: themeConfig(width),
      tooltip: {theme: scheme() === "slate" ? "dark" : "light"},
    });
  }

  // The drawn chart is the image; its controls are labelled, the radio group named.
  function describe(el) {
    var drawn = drawnElement(el);
    if (drawn) {
      drawn.setAttribute("role", "img");
      drawn.setAttribute("aria-label", el.getAttribute("data-name") || "chart");
      drawn.removeAttribute("aria-roledescription");
      // Inside an image every part is presentation; Vega still marks up its mark containers
      // ("rect mark container"), which would ask each for a name of its own.
      drawn.querySelectorAll("[role], [aria-roledescription], [aria-label]").forEach(function (n) {
        n.removeAttribute("role");
        n.removeAttribute("aria-roledescription");
        n.removeAttribute("aria-label");
      });
      var describedby = el.getAttribute("data-describedby");
      if (describedby) drawn.setAttribute("aria-describedby", describedby);
    }
    el.querySelectorAll(".vega-bind").forEach(function (bind) {
      var name = bind.querySelector(".vega-bind-name");
      var radios = bind.querySelector(".vega-bind-radio");
      if (radios && name) {
        radios.setAttribute("role", "radiogroup");
        radios.setAttribute("aria-label", name.textContent.trim());
      }
    });
  }

  // A chart wider than its panel scrolls inside it: focusable (the keyboard scrolls it),
  // named, and with a visible cue.
  function markScrolling(el) {
    var scrolls = drawnWidth(el) > panelWidth(el) + 1;
    el.classList.toggle("fp-scrolls", scrolls);
    if (scrolls) {
      el.setAttribute("tabindex", "0");
      el.setAttribute("role", "region");
      el.setAttribute("aria-label", (el.getAttribute("data-name") || "chart") +
                      " (scrolls sideways)");
    } else {
      el.removeAttribute("tabindex");
      el.removeAttribute("role");
      el.removeAttribute("aria-label");
    }
  }

  function finalize(entry) {
    if (entry.result) {
      entry.result.finalize();
      entry.result = null;
    }
  }

  // A multi-view chart wider than its panel is drawn again (at most `tries` times) with
  // the overhead it measured (axes, legends, headers beside the plots) taken off the plots.
  function refit(entry, width, tries, current) {
    var drawn = drawnWidth(entry.el);
    if (!entry.plots) return Promise.resolve(entry.result);
    var measured = drawn - entry.plots;
    if (drawn <= width + 1 || tries === 0 || measured <= (entry.overhead || 0)) {
      if (entry.overhead == null || drawn <= width + 1) entry.overhead = measured;
      return Promise.resolve(entry.result);
    }
    entry.overhead = measured;
    finalize(entry);
    return embed(entry, width).then(function (again) {
      if (!current()) {
        again.finalize();
        return null;
      }
      entry.result = again;
      return refit(entry, width, tries - 1, current);
    });
  }

  function render(entry) {
    var el = entry.el;
    var generation = ++entry.generation;
    el.setAttribute("data-fp-state", "rendering");
    var width = panelWidth(el);
    var multi = isMulti(JSON.parse(el.getAttribute("data-spec")));
    function current() {
      return generation === entry.generation && el.isConnected;
    }
    return loadVega()
      .then(function () {
        if (!current()) return null;
        finalize(entry);
        return embed(entry, width);
      })
      .then(function (result) {
        if (!result) return null;
        if (!current()) {
          result.finalize();
          return null;
        }
        entry.result = result;
        // A multi-view chart wider than its panel is drawn once more with the overhead it
        // measured (axes, legends, headers), unless it was already measured.
        return multi ? refit(entry, width, 2, current) : result;
      })
      .then(function (result) {
        if (!result) return;
        entry.width = width;
        describe(el);
        markScrolling(el);
        el.setAttribute("data-fp-scheme", scheme());
        el.setAttribute("data-fp-state", "rendered");
        if (entry.focusAfter) {
          // Asked for from the keyboard: go on to the chart's first control, or the chart.
          entry.focusAfter = false;
          var control = el.querySelector(".vega-bind input, .vega-bind select");
          if (!control) {
            control = el;
            el.setAttribute("tabindex", "-1");
          }
          control.focus();
        }
        el.dispatchEvent(new CustomEvent("fp:rendered", {bubbles: true}));
      })
      .catch(function (error) {
        el.setAttribute("data-fp-state", "error");
        el.textContent = "This chart could not be drawn: " + error.message;
        console.error(error);
      });
  }

  // One chart at a time, nearest the viewport first, with a pause between charts so that
  // input and scrolling are handled between them (no task holds the page for every chart).
  function schedule(entry) {
    if (queue.indexOf(entry) < 0) queue.push(entry);
    pump();
  }

  function distance(entry) {
    var box = entry.el.getBoundingClientRect();
    if (box.bottom < 0) return -box.bottom;
    if (box.top > innerHeight) return box.top - innerHeight;
    return 0;
  }

  function idle() {
    return new Promise(function (resolve) {
      if ("requestIdleCallback" in window) requestIdleCallback(resolve, {timeout: 200});
      else setTimeout(resolve, 16);
    });
  }

  function pump() {
    if (pumping || !queue.length) return;
    pumping = true;
    queue.sort(function (a, b) { return distance(a) - distance(b); });
    var entry = queue.shift();
    render(entry)
      .then(idle)
      .then(function () {
        pumping = false;
        pump();
      });
  }

  // The reader reached for a chart still shown as its static image: draw it.
  function activate(entry, fromKeyboard) {
    if (entry.el.getAttribute("data-fp-state") !== "static") return;
    entry.focusAfter = Boolean(fromKeyboard);
    var button = entry.button;
    if (button) {
      if (fromKeyboard) button.textContent = "Loading the interactive chart…";
      else button.hidden = true;
    }
    entry.el.setAttribute("data-fp-state", "waiting");
    schedule(entry);
  }

  function watchIntent(entry) {
    var el = entry.el;
    var figure = el.closest(".fp-figure");
    entry.button = figure && figure.querySelector(".fp-explore");
    if (entry.button) {
      entry.button.hidden = false; // without scripts it could do nothing: hidden until now
      entry.button.addEventListener("focus", prefetchVega);
      entry.button.addEventListener("click", function (event) {
        // Enter/Space on the button give detail 0: the keyboard asked.
        activate(entry, event.detail === 0);
      });
    }
    // A pointer that moves over the chart (not one the page scrolled under it), or a tap.
    el.addEventListener("pointermove", function (event) {
      if (event.movementX || event.movementY) activate(entry, false);
    });
    el.addEventListener("pointerdown", function () { activate(entry, false); });
    el.addEventListener("pointerenter", prefetchVega);
    el.addEventListener("fp:rendered", function () {
      if (entry.button) entry.button.hidden = true;
    });
  }

  function init() {
    // Instant navigation swapped the content out: free the old views.
    entries.forEach(function (entry) {
      if (entry.el.isConnected) return;
      entry.generation++;
      finalize(entry);
      entries.delete(entry);
    });
    queue = queue.filter(function (entry) { return entry.el.isConnected; });
    initReading();
    focusableScrollers();
    var fresh = document.querySelectorAll(".fp-chart[data-spec]:not([data-fp-state])");
    if (!fresh.length) return;
    fresh.forEach(function (el) {
      var entry = {el: el, result: null, generation: 0, overhead: null, plots: 0, width: 0,
                   button: null, focusAfter: false};
      entries.add(entry);
      el.setAttribute("data-fp-state", "static");
      watchIntent(entry);
    });
  }

  function rerenderDrawn() {
    entries.forEach(function (entry) {
      var state = entry.el.getAttribute("data-fp-state");
      if (state === "rendered" || state === "rendering") schedule(entry);
    });
  }

  // Single views follow a resize themselves (width "container"); multi-view charts are
  // fitted again when their panel's width changed.
  var resizeTimer = null;
  function onResize() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      entries.forEach(function (entry) {
        var el = entry.el;
        if (el.getAttribute("data-fp-state") !== "rendered") return;
        if (isMulti(JSON.parse(el.getAttribute("data-spec")))) {
          if (Math.abs(panelWidth(el) - entry.width) > 4) schedule(entry);
        } else {
          requestAnimationFrame(function () { markScrolling(el); });
        }
      });
      focusableScrollers();
    }, 150);
  }

  // Material wraps each table in a box that scrolls sideways when the table is wider than the
  // page (the compatibility table); the keyboard can scroll only what it can focus.
  function focusableScrollers() {
    document.querySelectorAll(".md-typeset__scrollwrap").forEach(function (wrap) {
      if (wrap.scrollWidth <= wrap.clientWidth + 1 || wrap.hasAttribute("tabindex")) return;
      wrap.setAttribute("tabindex", "0");
      wrap.setAttribute("role", "region");
      wrap.setAttribute("aria-label", "Table (scrolls sideways)");
    });
  }

  // --- reading mode: the story alone, each panel behind a "show the evidence" button --------

  function storedReading() {
    try {
      return localStorage.getItem(READING_KEY) === "on";
    } catch (error) {
      return false; // storage off (privacy settings): the mode lasts for this page only
    }
  }

  function storeReading(on) {
    try {
      localStorage.setItem(READING_KEY, on ? "on" : "off");
    } catch (error) {
      /* not remembered, still applied */
    }
  }

  function setEvidence(row, open) {
    row.classList.toggle("fp-open", open);
    var button = row.querySelector(".fp-evidence-toggle");
    if (!button) return;
    button.setAttribute("aria-expanded", open ? "true" : "false");
    var label = button.textContent.replace(/^(Show|Hide) the evidence/, "");
    button.textContent = (open ? "Hide the evidence" : "Show the evidence") + label;
  }

  function applyReading(on) {
    var rows = document.querySelector(".fp-rows");
    var toggle = document.querySelector(".fp-reading-toggle");
    if (!rows) return;
    rows.classList.toggle("fp-reading", on);
    if (toggle) toggle.setAttribute("aria-checked", on ? "true" : "false");
    rows.querySelectorAll(".fp-row").forEach(function (row) {
      var button = row.querySelector(".fp-evidence-toggle");
      if (button) button.hidden = !on;
      setEvidence(row, false);
    });
    if (on) openLinkedPanel();
  }

  // A permalink to a panel (#panel-p6) opens it in reading mode, and moves focus to it.
  function openLinkedPanel() {
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id && document.getElementById(id);
    var panel = target && target.closest && target.closest(".fp-panel");
    if (!panel) return;
    var row = panel.closest(".fp-row");
    if (row && row.parentElement.classList.contains("fp-reading")) setEvidence(row, true);
    panel.scrollIntoView();
    panel.focus({preventScroll: true});
  }

  function initReading() {
    var toggle = document.querySelector(".fp-reading-toggle");
    if (!toggle) return;
    if (!toggle.dataset.fpReady) { // a fresh page (instant navigation brings new elements)
      toggle.dataset.fpReady = "1";
      toggle.hidden = false; // without scripts the switch would do nothing: it stays hidden
      toggle.addEventListener("click", function () {
        var on = toggle.getAttribute("aria-checked") !== "true";
        storeReading(on);
        applyReading(on);
      });
      document.querySelectorAll(".fp-evidence-toggle").forEach(function (button) {
        button.addEventListener("click", function () {
          var row = button.closest(".fp-row");
          setEvidence(row, !row.classList.contains("fp-open"));
        });
      });
    }
    applyReading(storedReading());
    if (location.hash) openLinkedPanel();
  }

  function start() {
    new MutationObserver(rerenderDrawn).observe(document.body, {
      attributes: true,
      attributeFilter: ["data-md-color-scheme"],
    });
    window.addEventListener("resize", onResize);
    window.addEventListener("hashchange", openLinkedPanel);
    if (window.document$ && typeof window.document$.subscribe === "function") {
      window.document$.subscribe(init);
    }
    init();
  }

  // Does a spec hold a prompt laid out in characters (the one view that may scroll)?
  function hasTextStrip(node) {
    if (Array.isArray(node)) return node.some(hasTextStrip);
    if (!isObject(node)) return false;
    if (typeof node.width === "number" && laidOutText(node)) return true;
    return Object.keys(node).some(function (key) {
      return key !== "data" && key !== "datasets" && hasTextStrip(node[key]);
    });
  }

  // For tests and the bench: the entries, and how a chart is fitted and configured.
  window.forwardPass = {init: init, entries: entries, prepare: prepare, config: themeConfig,
                        hasTextStrip: hasTextStrip, activate: activate};
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
