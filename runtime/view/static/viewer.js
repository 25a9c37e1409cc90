// segcls-view: a slide in OpenSeadragon with its class mask as a second tiled layer on the same Deep Zoom grid.
// The page's JSON config (#segcls-config) says where the tiles are: the server, or files beside an export.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("segcls-config").textContent);
  const body = document.body;
  const state = { opacity: cfg.opacity, hidden: new Set(), mask: null, generation: 0 };

  function tileSource(template, query) {
    return {
      width: cfg.width,
      height: cfg.height,
      tileSize: cfg.tileSize,
      tileOverlap: cfg.overlap,
      getTileUrl: function (level, x, y) {
        return template.replace("{level}", level).replace("{x}", x).replace("{y}", y) + (query || "");
      },
    };
  }

  const viewer = OpenSeadragon({
    id: "viewer",
    // Canvas by default: where there is no GPU (many hospital desktops and VMs, CI) WebGL is drawn in software,
    // and here it took 20x longer to draw the two layers; ?drawer=webgl asks for it.
    drawer: new URLSearchParams(location.search).get("drawer") || "canvas",
    tileSources: tileSource(cfg.slideTiles),
    showNavigationControl: false,
    showNavigator: true,
    navigatorPosition: "TOP_RIGHT",
    navigatorSizeRatio: 0.18,
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.5,
    minZoomImageRatio: 0.8,
    imageLoaderLimit: 8,
    timeout: 60000,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });
  window.segclsViewer = viewer; // for tests and the browser console

  // -- readiness, for people (nothing) and tests (data attributes on <body>) -------------------------------
  function updateLoaded() {
    const n = viewer.world.getItemCount();
    let loaded = n > 0;
    for (let i = 0; i < n; i++) loaded = loaded && viewer.world.getItemAt(i).getFullyLoaded();
    const expected = cfg.maskTiles ? 2 : 1;
    body.dataset.loaded = loaded && n === expected ? "yes" : "no";
    body.dataset.generation = String(state.generation);
  }
  viewer.world.addHandler("add-item", function (e) {
    e.item.addHandler("fully-loaded-change", updateLoaded);
    updateLoaded();
  });
  viewer.world.addHandler("remove-item", updateLoaded);

  // -- the mask layer ------------------------------------------------------------------------------------
  function maskQuery() {
    if (!state.hidden.size) return "";
    return "?hide=" + Array.from(state.hidden).sort((a, b) => a - b).join(",");
  }

  // A toggle changes the tiles' URLs: the new layer goes on top and the old one is removed once the new one
  // has every tile in view, so the mask does not flicker off in between.
  function showMask() {
    state.generation += 1;
    const generation = state.generation;
    body.dataset.loaded = "no";
    const previous = state.mask;
    viewer.addTiledImage({
      tileSource: tileSource(cfg.maskTiles, maskQuery()),
      opacity: document.getElementById("show-mask").checked ? state.opacity : 0,
      success: function (e) {
        if (generation !== state.generation) {
          viewer.world.removeItem(e.item);
          return;
        }
        state.mask = e.item;
        const done = function () {
          if (previous && e.item.getFullyLoaded() && viewer.world.getIndexOfItem(previous) >= 0) {
            viewer.world.removeItem(previous);
          }
          updateLoaded();
        };
        e.item.addHandler("fully-loaded-change", done);
        done();
      },
    });
  }

  function classRow(c) {
    const row = document.createElement("tr");
    row.dataset.index = c.index;
    const name = document.createElement("td");
    const area = document.createElement("td");
    area.className = "num";
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.disabled = !cfg.toggles;
    box.id = "class-" + c.index;
    box.setAttribute("aria-label", "Show " + c.name);
    box.addEventListener("change", function () {
      if (box.checked) state.hidden.delete(c.index);
      else state.hidden.add(c.index);
      showMask();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + c.color.join(",") + ")";
    label.append(box, swatch, document.createTextNode(c.name));
    label.htmlFor = box.id;
    name.append(label);
    area.textContent = c.area === null || c.area === undefined ? "–" : formatArea(c.area);
    row.append(name, area);
    return row;
  }

  function formatArea(mm2) {
    if (mm2 === 0) return "0";
    if (mm2 < 0.01) return "< 0.01";
    return mm2.toFixed(mm2 < 100 ? 2 : 1);
  }

  if (cfg.maskTiles) {
    const tbody = document.querySelector("#legend tbody");
    cfg.classes.forEach((c) => tbody.append(classRow(c)));
    document.getElementById("toggle-note").hidden = cfg.toggles;
    const slider = document.getElementById("opacity");
    const shown = document.getElementById("opacity-value");
    slider.value = Math.round(state.opacity * 100);
    shown.textContent = slider.value + " %";
    const maskBox = document.getElementById("show-mask");
    // The whole mask on and off (the checkbox, or "m"): pathologists flick it to compare with the bare tissue.
    function applyOpacity() {
      const value = maskBox.checked ? state.opacity : 0;
      for (let i = 1; i < viewer.world.getItemCount(); i++) viewer.world.getItemAt(i).setOpacity(value);
    }
    state.applyOpacity = applyOpacity;
    slider.addEventListener("input", function () {
      state.opacity = slider.value / 100;
      shown.textContent = slider.value + " %";
      applyOpacity();
    });
    maskBox.addEventListener("change", applyOpacity);
    document.addEventListener("keydown", function (e) {
      if (e.key !== "m" || e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|TEXTAREA)$/.test(e.target.tagName)) return;
      maskBox.checked = !maskBox.checked;
      applyOpacity();
    });
    viewer.addOnceHandler("open", showMask);
  }

  // -- the slide's frame: image pixels -> screen pixels ----------------------------------------------------
  function frame() {
    const item = viewer.world.getItemAt(0);
    if (!item) return null;
    const p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(cfg.width, 0));
    return { x: p0.x, y: p0.y, scale: (p1.x - p0.x) / cfg.width, item: item };
  }

  // -- the pointer: position in µm and the class under it -------------------------------------------------
  const cursor = document.getElementById("cursor");
  let pending = null;
  let lastLookup = 0;
  function describe(x, y, className) {
    const where = cfg.mpp
      ? "x " + (x * cfg.mpp).toFixed(1) + " µm, y " + (y * cfg.mpp).toFixed(1) + " µm"
      : "x " + Math.floor(x) + " px, y " + Math.floor(y) + " px (no µm/px in the slide)";
    const cls = className === undefined ? "" : "<br>Class: <strong>" + className + "</strong>";
    cursor.innerHTML = where + (cfg.mpp ? " <span class='note'>(" + Math.floor(x) + ", " + Math.floor(y) + " px)</span>" : "") + cls;
  }
  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]);
  }
  new OpenSeadragon.MouseTracker({
    element: viewer.element,
    moveHandler: function (e) {
      const f = frame();
      if (!f) return;
      const x = (e.position.x - f.x) / f.scale;
      const y = (e.position.y - f.y) / f.scale;
      if (x < 0 || y < 0 || x >= cfg.width || y >= cfg.height) {
        cursor.textContent = "Outside the slide.";
        return;
      }
      describe(x, y, cfg.classUrl ? "…" : undefined);
      if (!cfg.classUrl) return;
      const ticket = ++lastLookup;
      if (pending) pending.abort();
      pending = new AbortController();
      fetch(cfg.classUrl + "?x=" + Math.floor(x) + "&y=" + Math.floor(y), { signal: pending.signal })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((answer) => {
          if (ticket === lastLookup) describe(x, y, answer.name === null ? "unlabelled" : escapeHtml(answer.name));
        })
        .catch(() => {});
    },
  });

  // -- the scale bar ----------------------------------------------------------------------------------------
  const scalebar = document.getElementById("scalebar");
  const bar = document.getElementById("scalebar-bar");
  const barText = document.getElementById("scalebar-text");
  function updateScalebar(f) {
    if (!cfg.mpp || !f) {
      scalebar.hidden = true;
      return;
    }
    const umPerScreenPx = cfg.mpp / f.scale;
    const target = 120 * umPerScreenPx; // µm under ~120 screen px
    const power = Math.pow(10, Math.floor(Math.log10(target)));
    const nice = [1, 2, 5, 10].map((m) => m * power).filter((v) => v <= target).pop();
    bar.style.width = nice / umPerScreenPx + "px";
    barText.textContent = nice >= 1000 ? nice / 1000 + " mm" : nice + " µm";
    scalebar.hidden = false;
  }

  // -- GeoJSON outlines on a canvas over the viewer -------------------------------------------------------
  const canvas = document.getElementById("outlines");
  const outlines = { paths: null, shown: false };
  function resizeCanvas() {
    const rect = viewer.element.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = rect.width + "px";
    canvas.style.height = rect.height + "px";
    canvas.width = Math.round(rect.width * dpr);
    canvas.height = Math.round(rect.height * dpr);
  }
  function drawOutlines(f) {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!outlines.shown || !outlines.paths || !f) return;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr * f.scale, 0, 0, dpr * f.scale, dpr * f.x, dpr * f.y);
    ctx.lineWidth = 2 / f.scale;
    ctx.lineJoin = "round";
    for (const p of outlines.paths) {
      ctx.strokeStyle = p.color;
      ctx.stroke(p.path);
    }
  }
  function ringsOf(geometry) {
    if (!geometry) return [];
    if (geometry.type === "Polygon") return geometry.coordinates;
    if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
    return [];
  }
  // An export holds the GeoJSON as a script: browsers do not fetch() from file://.
  function fetchGeojson() {
    if (!/\.js$/.test(cfg.geojsonUrl)) {
      return fetch(cfg.geojsonUrl).then((r) => (r.ok ? r.json() : Promise.reject(new Error("GeoJSON: HTTP " + r.status))));
    }
    return new Promise(function (resolve, reject) {
      const script = document.createElement("script");
      script.src = cfg.geojsonUrl;
      script.onload = () => resolve(window.SEGCLS_GEOJSON);
      script.onerror = reject;
      document.head.append(script);
    });
  }
  function loadOutlines() {
    return fetchGeojson()
      .then((data) => {
        outlines.paths = (data.features || []).map((feature) => {
          const path = new Path2D();
          for (const ring of ringsOf(feature.geometry)) {
            ring.forEach((pt, i) => (i ? path.lineTo(pt[0], pt[1]) : path.moveTo(pt[0], pt[1])));
            path.closePath();
          }
          const c = ((feature.properties || {}).classification || {}).color || [0, 0, 0];
          return { path: path, color: "rgb(" + c.join(",") + ")" };
        });
      });
  }
  if (cfg.geojsonUrl) {
    document.getElementById("show-outlines").addEventListener("change", function (e) {
      outlines.shown = e.target.checked;
      const ready = outlines.paths ? Promise.resolve() : loadOutlines();
      ready.then(() => {
        drawOutlines(frame());
        body.dataset.outlines = outlines.shown ? "shown" : "hidden";
      });
    });
  }

  function redraw() {
    const f = frame();
    updateScalebar(f);
    drawOutlines(f);
  }
  viewer.addHandler("update-viewport", redraw);
  viewer.addHandler("resize", function () {
    resizeCanvas();
    redraw();
  });
  resizeCanvas();
})();
