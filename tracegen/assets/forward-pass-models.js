/* Forward Pass, annotated: the story page's model switcher.
 *
 * The MkDocs plugin writes, when the site shows several models, a <div class="fp-models">
 * (hidden: without this script its buttons could do nothing) whose data-fp-models lists
 * each model's slug and, for all but the page's own, the script that carries its panels.
 * Choosing a model swaps every panel (charts, caption, verdict) and the model line for that
 * model's, without reloading the page:
 *
 * - another model's panels are loaded only when it is first chosen, as a <script> (fetch
 *   would not work from disk, over file://), which calls forwardPassModels.receive(data);
 * - the page's own panels are kept from the page itself, so switching back loads nothing;
 * - the reader keeps their place: the story row at the top of the window stays where it
 *   was, also while the new charts draw and change height;
 * - the choice is in the URL (?model=<slug>), so a link opens the same model; the page's
 *   own model has no parameter.
 *
 * The new charts are drawn by forward-pass.js (window.forwardPass.init picks them up).
 * State for tests: data-fp-model on the switcher = the model shown.
 */
(function () {
  "use strict";
  if (window.forwardPassModels) return; // included twice

  var PARAM = "model";
  var KEEP_MS = 4000; // how long after a switch to hold the reader's place as charts draw
  var loading = {}; // slug -> Promise of that model's data
  var waiting = {}; // slug -> resolve function, until its script calls receive()
  var own = null; // the page's own model: {slug, line, panels}

  function switcher() {
    return document.querySelector(".fp-models[data-fp-models]");
  }

  function listed(el) {
    try {
      return JSON.parse(el.getAttribute("data-fp-models")) || [];
    } catch (error) {
      return [];
    }
  }

  function snapshot(slug) {
    var panels = {};
    document.querySelectorAll("aside.fp-panel[data-panel]").forEach(function (aside) {
      panels[aside.getAttribute("data-panel")] = aside.outerHTML;
    });
    var line = document.querySelector(".fp-model-line");
    return {slug: slug, line: line ? line.outerHTML : "", panels: panels};
  }

  function load(model) {
    if (!model.script) return Promise.resolve(own);
    if (!loading[model.slug]) {
      loading[model.slug] = new Promise(function (resolve, reject) {
        waiting[model.slug] = resolve;
        var script = document.createElement("script");
        script.src = new URL(model.script, document.baseURI).href;
        script.onerror = function () {
          delete loading[model.slug];
          reject(new Error("forward-pass: cannot load " + script.src));
        };
        document.head.appendChild(script);
      });
    }
    return loading[model.slug];
  }

  // The first story row still on screen, and where its top is.
  function place() {
    var rows = document.querySelectorAll(".fp-row");
    for (var i = 0; i < rows.length; i++) {
      var box = rows[i].getBoundingClientRect();
      if (box.bottom > 0) return {el: rows[i], top: box.top};
    }
    return null;
  }

  function hold(at) {
    if (!at || !at.el.isConnected) return;
    var moved = at.el.getBoundingClientRect().top - at.top;
    if (Math.abs(moved) >= 1) window.scrollBy(0, moved);
  }

  function show(data, el) {
    var at = place();
    Object.keys(data.panels).forEach(function (key) {
      var old = document.querySelector('aside.fp-panel[data-panel="' + key + '"]');
      if (old) old.outerHTML = data.panels[key];
    });
    var line = document.querySelector(".fp-model-line");
    if (line && data.line) line.outerHTML = data.line;
    hold(at);
    if (window.forwardPass) window.forwardPass.init();
    // Charts draw after the swap and take their own height: hold the place meanwhile.
    var until = Date.now() + KEEP_MS;
    function drawn() {
      if (Date.now() > until) document.removeEventListener("fp:rendered", drawn);
      else hold(at);
    }
    document.addEventListener("fp:rendered", drawn);
    el.setAttribute("data-fp-model", data.slug);
    el.querySelectorAll("button[data-fp-model]").forEach(function (button) {
      var chosen = button.getAttribute("data-fp-model") === data.slug;
      button.setAttribute("aria-pressed", chosen ? "true" : "false");
      button.classList.toggle("md-button--primary", chosen);
    });
  }

  function remember(slug) {
    var url = new URL(window.location.href);
    if (own && slug === own.slug) url.searchParams.delete(PARAM);
    else url.searchParams.set(PARAM, slug);
    window.history.replaceState(window.history.state, "", url.href);
  }

  function choose(el, slug) {
    var model = listed(el).filter(function (m) { return m.slug === slug; })[0];
    if (!model || el.getAttribute("data-fp-model") === slug) return Promise.resolve();
    el.setAttribute("aria-busy", "true");
    return load(model)
      .then(function (data) {
        show(data, el);
        remember(slug);
      })
      .catch(function (error) { console.error(error); })
      .then(function () { el.removeAttribute("aria-busy"); });
  }

  function init() {
    var el = switcher();
    if (!el || el.hasAttribute("data-fp-model")) return; // none, or set up already
    var models = listed(el);
    if (!models.length) return;
    own = snapshot(models[0].slug);
    el.setAttribute("data-fp-model", own.slug);
    el.hidden = false;
    el.querySelectorAll("button[data-fp-model]").forEach(function (button) {
      button.classList.add("md-button");
      if (button.getAttribute("aria-pressed") === "true") button.classList.add("md-button--primary");
      button.addEventListener("click", function () {
        choose(el, button.getAttribute("data-fp-model"));
      });
    });
    var wanted = new URL(window.location.href).searchParams.get(PARAM);
    if (wanted && wanted !== own.slug) choose(el, wanted);
  }

  window.forwardPassModels = {
    init: init,
    choose: function (slug) { var el = switcher(); return el ? choose(el, slug) : null; },
    receive: function (data) {
      if (data && waiting[data.slug]) {
        waiting[data.slug](data);
        delete waiting[data.slug];
      }
    },
  };
  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(init);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
