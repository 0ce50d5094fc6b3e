/* Forward Pass, annotated: renders the Vega-Lite charts beside the story.
 *
 * Each chart is a <div class="fp-chart" data-spec='…'> written by the MkDocs plugin. Specs live
 * in an attribute, not in <script type="application/json">, because Material's instant
 * navigation re-runs inline scripts and drops their type.
 *
 * - The Vega bundle (served by the site itself) is loaded only on pages that have charts.
 * - Charts render when they scroll near the viewport (IntersectionObserver).
 * - Colours come from Material's CSS variables, so charts follow the light/dark palette; a
 *   palette switch re-renders every chart already drawn.
 * - Works with instant navigation (document$) and without it (file://, where document$
 *   never fires): init() is idempotent and runs on both.
 *
 * State for tests and styling: data-fp-state = waiting | rendering | rendered | error, and
 * data-fp-scheme = the palette the chart was last drawn in.
 */
(function () {
  "use strict";
  if (window.forwardPass) return; // the script was included twice

  var bundleUrl = new URL("vega-bundle.js", document.currentScript.src).href;
  var entries = new Set();
  var bundle = null;
  var observer = null;

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

  // A Vega config from the theme's own colours; the spec's config still wins where it has one.
  function themeConfig() {
    var css = getComputedStyle(document.body);
    function v(name, fallback) {
      return css.getPropertyValue(name).trim() || fallback;
    }
    var fg = v("--md-default-fg-color", "#222");
    var light = v("--md-default-fg-color--light", "#555");
    var lighter = v("--md-default-fg-color--lighter", "#888");
    var lightest = v("--md-default-fg-color--lightest", "#ddd");
    var axis = {labelColor: light, titleColor: fg, domainColor: lighter, tickColor: lighter,
                gridColor: lightest};
    return {
      background: v("--md-default-bg-color", "#fff"),
      font: css.fontFamily,
      view: {stroke: lightest},
      axis: axis,
      legend: {labelColor: light, titleColor: fg},
      header: {labelColor: fg, titleColor: fg},
      title: {color: fg, subtitleColor: light},
      text: {color: fg},
      rule: {color: light},
    };
  }

  function render(entry) {
    var el = entry.el;
    var generation = ++entry.generation;
    el.setAttribute("data-fp-state", "rendering");
    return loadVega()
      .then(function () {
        if (generation !== entry.generation || !el.isConnected) return null;
        if (entry.result) {
          entry.result.finalize();
          entry.result = null;
        }
        var spec = JSON.parse(el.getAttribute("data-spec"));
        var dark = scheme() === "slate";
        var host = el.querySelector(".fp-vega") || el; // vega-embed relabels its host
        return window.vegaEmbed(host, spec, {
          renderer: el.getAttribute("data-renderer") === "canvas" ? "canvas" : "svg",
          actions: false,
          config: themeConfig(),
          tooltip: {theme: dark ? "dark" : "light"},
        });
      })
      .then(function (result) {
        if (!result) return;
        if (generation !== entry.generation) {
          result.finalize();
          return;
        }
        entry.result = result;
        el.setAttribute("data-fp-scheme", scheme());
        el.setAttribute("data-fp-state", "rendered");
        el.dispatchEvent(new CustomEvent("fp:rendered", {bubbles: true}));
      })
      .catch(function (error) {
        el.setAttribute("data-fp-state", "error");
        el.textContent = "This chart could not be drawn: " + error.message;
        console.error(error);
      });
  }

  function onIntersect(seen) {
    seen.forEach(function (item) {
      if (!item.isIntersecting) return;
      observer.unobserve(item.target);
      entries.forEach(function (entry) {
        if (entry.el === item.target) render(entry);
      });
    });
  }

  function init() {
    // Instant navigation swapped the content out: free the old views.
    entries.forEach(function (entry) {
      if (entry.el.isConnected) return;
      entry.generation++;
      if (entry.result) entry.result.finalize();
      entries.delete(entry);
    });
    var fresh = document.querySelectorAll(".fp-chart[data-spec]:not([data-fp-state])");
    if (!fresh.length) return;
    loadVega().catch(function (error) { console.error(error); }); // fetch while the reader reads
    if (!observer && "IntersectionObserver" in window) {
      observer = new IntersectionObserver(onIntersect, {rootMargin: "400px 0px"});
    }
    fresh.forEach(function (el) {
      var entry = {el: el, result: null, generation: 0};
      entries.add(entry);
      el.setAttribute("data-fp-state", "waiting");
      if (observer) observer.observe(el);
      else render(entry);
    });
  }

  function rerenderDrawn() {
    entries.forEach(function (entry) {
      var state = entry.el.getAttribute("data-fp-state");
      if (state === "rendered" || state === "rendering") render(entry);
    });
  }

  function start() {
    new MutationObserver(rerenderDrawn).observe(document.body, {
      attributes: true,
      attributeFilter: ["data-md-color-scheme"],
    });
    if (window.document$ && typeof window.document$.subscribe === "function") {
      window.document$.subscribe(init);
    }
    init();
  }

  window.forwardPass = {init: init, entries: entries};
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
