// Veil admin panel: the review page (a photo, or a video's frame view and timeline). Plain JavaScript, no
// library: candidates are SVG rectangles over the picture (styled by class in admin.css: the CSP refuses
// inline styles), the timeline is a canvas. Unsent edits are kept in sessionStorage per job, so the files of
// an archive or a reload keep them until the render sends them all.
(function () {
  "use strict";
  var setup = JSON.parse(document.getElementById("review-setup").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var base = "/admin/jobs/" + setup.job + "/review/" + setup.task;
  var csrf = (document.querySelector("input[name=csrf_token]") || {}).value || "";
  var KINDS = ["face", "plate"];
  var $ = function (id) { return document.getElementById(id); };
  var overlay = $("overlay"), picture = $("picture"), canvasBox = $("canvas"), list = $("cand-list");
  var isVideo = setup.media === "video";

  var state = {
    frame: 0, zoom: 1, kind: "face", selected: null, thresholds: Object.assign({}, setup.thresholds),
    frames: {}, loading: {}, recorded: { removed: {}, kept: {}, tracks: {}, added: [] }, timeline: null
  };
  var storeKey = "veil-review:" + setup.job;
  function allEdits() { try { return JSON.parse(sessionStorage.getItem(storeKey)) || {}; } catch (e) { return {}; } }
  function mine() {
    var all = allEdits();
    return all[setup.task] || { removed: {}, kept: {}, tracks: {}, added: [] };
  }
  var edits = mine();
  function save() { var all = allEdits(); all[setup.task] = edits; sessionStorage.setItem(storeKey, JSON.stringify(all)); }

  // ------------------------------------------------------------------ data
  function api(path, body) {
    var init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.method = "POST"; init.keepalive = true;
      init.headers["Content-Type"] = "application/json"; init.headers["X-CSRF-Token"] = csrf;
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) { data._status = r.status; return data; });
    });
  }
  var WINDOW = 200;
  function ensureFrames(index) {
    var start = Math.floor(index / WINDOW) * WINDOW;
    if (state.frames[index] !== undefined || state.loading[start]) return Promise.resolve();
    state.loading[start] = true;
    return api(base + "/candidates.json?start=" + start + "&count=" + WINDOW).then(function (data) {
      Object.keys(data.frames || {}).forEach(function (i) { state.frames[i] = data.frames[i]; });
      if (data.edits && !state.editsLoaded) { state.editsLoaded = true; recordedEdits(data.edits); }
    });
  }
  function recordedEdits(list) {
    list.forEach(function (e) {
      if (e.op === "remove") e.ids.forEach(function (id) { state.recorded.removed[id] = 1; });
      if (e.op === "keep") e.ids.forEach(function (id) { state.recorded.kept[id] = 1; });
      if (e.op === "remove_track") state.recorded.tracks[e.track] = 1;
      if (e.op === "add") state.recorded.added.push({ kind: e.kind, frames: e.frames, by: e.by });
    });
  }

  // ------------------------------------------------------------------ what each candidate is
  function candidate(row) {
    return { id: row[0], kind: KINDS[row[1]], box: row.slice(2, 6), score: row[6], track: row[7] };
  }
  function status(c) {
    if (state.recorded.removed[c.id] || state.recorded.tracks[c.track]) return "removed locked";
    if (edits.removed[c.id] || edits.tracks[c.track]) return "removed";
    if (state.recorded.kept[c.id]) return "kept locked";
    if (edits.kept[c.id]) return "kept";
    var t = state.thresholds[c.kind];
    if (c.score >= t - 1e-6) return "drawn";
    if (isVideo && c.track && c.score >= t - setup.near) return "drawn tracked";  // the tracker's low-score stage
    return c.score >= t - setup.near ? "below" : "below far";
  }
  function toggle(c, whole) {
    var s = status(c);
    if (s.indexOf("locked") >= 0 || !setup.canEdit) return;
    if (whole && c.track) {
      if (edits.tracks[c.track]) delete edits.tracks[c.track]; else edits.tracks[c.track] = 1;
    } else if (s === "removed") { delete edits.removed[c.id]; if (c.track) delete edits.tracks[c.track]; }
    else if (s === "kept") delete edits.kept[c.id];
    else if (s.indexOf("drawn") === 0) edits.removed[c.id] = 1;
    else edits.kept[c.id] = 1;
    save(); draw();
  }
  function spanBox(frames, index) {
    var keys = Object.keys(frames).map(Number).sort(function (a, b) { return a - b; });
    if (frames[index]) return frames[index];
    if (keys.length < 2 || index < keys[0] || index > keys[keys.length - 1]) return null;
    var before = keys.filter(function (k) { return k < index; }).pop(), after = keys.filter(function (k) { return k > index; })[0];
    var t = (index - before) / (after - before);
    return frames[before].map(function (v, n) { return (1 - t) * v + t * frames[after][n]; });
  }

  // ------------------------------------------------------------------ drawing
  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }
  function rect(box, cls, label, data) {
    var g = el("g", { "class": cls }, overlay);
    el("rect", { x: box[0], y: box[1], width: box[2] - box[0], height: box[3] - box[1] }, g);
    if (label) {
      var text = el("text", { x: box[0], y: Math.max(box[1] - 4 * unit(), 12 * unit()), "font-size": 12 * unit() }, g);
      text.textContent = label;
    }
    Object.keys(data || {}).forEach(function (k) { g.dataset[k] = data[k]; });
    return g;
  }
  function unit() { return setup.width / Math.max(1, overlay.getBoundingClientRect().width); }
  function current() { return (state.frames[state.frame] || []).map(candidate); }

  function draw() {
    while (overlay.firstChild) overlay.removeChild(overlay.firstChild);
    var cands = current();
    cands.forEach(function (c) {
      var s = status(c), cls = "cand c-" + s.split(" ").join(" c-") + " k-" + c.kind;
      if (state.selected === c.id) cls += " selected";
      var label = s.indexOf("below") === 0 ? c.kind + " " + c.score.toFixed(2) : (s.indexOf("removed") === 0 ? "removed" : "");
      rect(c.box, cls, label, { id: c.id });
    });
    state.recorded.added.forEach(function (a) {
      var box = spanBox(a.frames, state.frame);
      if (box) rect(box, "cand c-added c-locked k-" + a.kind, "added · " + a.kind);
    });
    edits.added.forEach(function (a, n) {
      var box = spanBox(a.frames, state.frame);
      var key = a.frames[state.frame] ? " key" : "";
      if (box) rect(box, "cand c-added k-" + a.kind + key + (state.selected === "a" + n ? " selected" : ""), "added · " + a.kind + (key ? "" : " (span)"), { added: n });
    });
    if (state.drag) rect(state.drag.box, "cand c-drawing k-" + state.kind);
    drawList(cands); counts(cands); drawTimeline();
  }

  function drawList(cands) {
    var t = state.thresholds;
    var rows = cands.slice().sort(function (a, b) { return Math.abs(a.score - t[a.kind]) - Math.abs(b.score - t[b.kind]); });
    list.textContent = "";
    rows.forEach(function (c) {
      var li = document.createElement("li"), s = status(c), button = document.createElement("button");
      button.type = "button"; button.className = "cand-row s-" + s.split(" ")[0] + (state.selected === c.id ? " selected" : "");
      button.dataset.id = c.id;
      button.innerHTML = "";
      var name = document.createElement("span"); name.textContent = c.kind + (c.track ? " · track " + c.track : "");
      var score = document.createElement("span"); score.className = "mono"; score.textContent = c.score.toFixed(2);
      var chip = document.createElement("span"); chip.className = "chip chip-" + s.split(" ")[0]; chip.textContent = { drawn: "blurred", below: "below", removed: "removed", kept: "kept" }[s.split(" ")[0]] + (s.indexOf("locked") > 0 ? " ✓" : "");
      if (s.indexOf("locked") > 0) chip.title = "recorded by an earlier render";
      button.append(name, score, chip);
      button.setAttribute("aria-pressed", String(s.indexOf("drawn") === 0 || s.indexOf("kept") === 0));
      button.title = setup.canEdit ? "Toggle " + c.id : c.id;
      button.addEventListener("click", function () { state.selected = c.id; toggle(c); });
      li.appendChild(button); list.appendChild(li);
    });
    $("list-note").textContent = isVideo ? "frame " + state.frame : "closest to the threshold first";
  }

  function counts(cands) {
    var n = { drawn: 0, below: 0, removed: 0, kept: 0 };
    cands.forEach(function (c) { n[status(c).split(" ")[0]] += 1; });
    var added = edits.added.filter(function (a) { return spanBox(a.frames, state.frame); }).length;
    $("counts").textContent = (isVideo ? "This frame: " : "") + n.drawn + " blurred, " + n.below + " below the threshold, " +
      n.removed + " removed, " + n.kept + " kept, " + added + " added.";
    var changes = Object.keys(edits.removed).length + Object.keys(edits.kept).length + Object.keys(edits.tracks).length + edits.added.length;
    var moved = KINDS.filter(function (k) { return Math.abs(state.thresholds[k] - setup.thresholds[k]) > 1e-6; });
    $("pending").textContent = (changes || moved.length) ? changes + " unsent change" + (changes === 1 ? "" : "s") +
      (moved.length ? ", thresholds " + moved.map(function (k) { return k + " " + state.thresholds[k].toFixed(2); }).join(", ") : "") + "." : "No changes yet.";
  }

  // ------------------------------------------------------------------ pointer: click toggles, drag draws
  function point(event) {
    var r = overlay.getBoundingClientRect();
    return [Math.min(setup.width, Math.max(0, (event.clientX - r.left) / r.width * setup.width)),
            Math.min(setup.height, Math.max(0, (event.clientY - r.top) / r.height * setup.height))];
  }
  overlay.addEventListener("pointerdown", function (event) {
    if (event.button !== 0) return;
    var p = point(event);
    state.drag = { from: p, box: [p[0], p[1], p[0], p[1]], target: event.target.closest("g"), moved: false };
    overlay.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  overlay.addEventListener("pointermove", function (event) {
    if (!state.drag) return;
    var p = point(event), f = state.drag.from;
    state.drag.box = [Math.min(f[0], p[0]), Math.min(f[1], p[1]), Math.max(f[0], p[0]), Math.max(f[1], p[1])];
    var r = overlay.getBoundingClientRect();
    if ((state.drag.box[2] - state.drag.box[0]) * r.width / setup.width > 4 || (state.drag.box[3] - state.drag.box[1]) * r.height / setup.height > 4) state.drag.moved = true;
    if (state.drag.moved && setup.canEdit) draw();
  });
  overlay.addEventListener("pointerup", function () {
    var drag = state.drag; state.drag = null;
    if (!drag) return;
    if (drag.moved && setup.canEdit) { addBox(drag.box.map(function (v) { return Math.round(v * 10) / 10; })); return; }
    var g = drag.target;
    if (g && g.dataset.id) {
      var c = current().filter(function (x) { return x.id === g.dataset.id; })[0];
      state.selected = c.id; toggle(c);
    } else if (g && g.dataset.added !== undefined) { state.selected = "a" + g.dataset.added; draw(); }
    else { state.selected = null; draw(); }
  });
  function addBox(box) {
    var sel = state.selected && state.selected[0] === "a" ? edits.added[Number(state.selected.slice(1))] : null;
    if (isVideo && sel && !sel.frames[state.frame]) sel.frames[state.frame] = box;  // a key frame of the selected span
    else { edits.added.push({ kind: state.kind, frames: {} }); edits.added[edits.added.length - 1].frames[state.frame] = box; state.selected = "a" + (edits.added.length - 1); }
    save(); draw();
  }
  function removeSelected() {
    if (!state.selected) return;
    if (state.selected[0] === "a") {
      var n = Number(state.selected.slice(1)), a = edits.added[n];
      if (isVideo && a.frames[state.frame] && Object.keys(a.frames).length > 1) delete a.frames[state.frame];
      else edits.added.splice(n, 1);
      state.selected = null;
    } else {
      var c = current().filter(function (x) { return x.id === state.selected; })[0];
      if (c && status(c).indexOf("removed") < 0) toggle(c);
    }
    save(); draw();
  }

  // ------------------------------------------------------------------ tools: kind, zoom, thresholds
  document.querySelectorAll("[data-kind]").forEach(function (b) { b.addEventListener("click", function () { setKind(b.dataset.kind); }); });
  function setKind(kind) {
    state.kind = kind;
    document.querySelectorAll("[data-kind]").forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.kind === kind)); });
  }
  document.querySelectorAll("[data-zoom]").forEach(function (b) { b.addEventListener("click", function () { zoom(Number(b.dataset.zoom)); }); });
  function zoom(step) {
    if (step !== undefined) state.zoom = step === 0 ? 1 : Math.min(8, Math.max(1, state.zoom * (step > 0 ? 1.5 : 1 / 1.5)));
    // fitted: the whole picture in the window's height (a video leaves room for its frame bar and timeline)
    var room = window.innerHeight * (isVideo ? 0.52 : 0.66), fit = Math.min($("viewport").clientWidth, room * setup.width / setup.height);
    canvasBox.style.width = Math.floor(fit * state.zoom) + "px";
    draw();
  }
  document.querySelectorAll("[data-threshold]").forEach(function (input) {
    input.addEventListener("input", function () {
      state.thresholds[input.dataset.threshold] = Number(input.value);
      $("out-" + input.dataset.threshold).textContent = Number(input.value).toFixed(2);
      draw(); if (isVideo) loadTimeline();
    });
  });

  // ------------------------------------------------------------------ video: frames, timeline, places to look
  function show(index) {
    index = Math.max(0, Math.min(setup.frames - 1, index));
    state.frame = index;
    picture.src = base + "/before.jpg?frame=" + index + (playing ? "&side=480" : "");  // playing: lower resolution
    if (isVideo && !$("compare").hidden) compare();  // before and after follow the frame
    if (isVideo) { $("scrubber").value = index; $("frame-label").textContent = index + (setup.fps ? " · " + (index / setup.fps).toFixed(2) + " s" : ""); }
    ensureFrames(index).then(draw);
    if (index + WINDOW / 2 < setup.frames) ensureFrames(index + WINDOW / 2);
  }
  var timer = null;
  function loadTimeline() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      api(base + "/timeline.json?face=" + state.thresholds.face + "&plate=" + state.thresholds.plate).then(function (data) {
        if (state.tracksPending && data.tracks_ready) {  // the candidates' track ids are known now
          state.frames = {}; state.loading = {};
          ensureFrames(state.frame).then(draw);
        }
        state.tracksPending = !data.tracks_ready;
        state.timeline = data; drawTimeline();
        if (!data.tracks_ready) setTimeout(loadTimeline, 2000);
      });
    }, 150);
  }
  function place(direction) {
    if (!isVideo) {  // a photo: step through the list, closest to the threshold first
      var rows = list.querySelectorAll(".cand-row");
      if (!rows.length) return;
      var ids = Array.prototype.map.call(rows, function (r) { return r.dataset.id; });
      var at = ids.indexOf(state.selected);
      state.selected = ids[(at + direction + ids.length) % ids.length]; draw();
      var chosen = list.querySelector('.cand-row[data-id="' + state.selected + '"]');
      if (chosen) chosen.focus();
      return;
    }
    var marks = (state.timeline || {}).marks || [];
    var next = direction > 0 ? marks.filter(function (m) { return m > state.frame; })[0]
      : marks.filter(function (m) { return m < state.frame; }).pop();
    if (next !== undefined) show(next);
  }
  function drawTimeline() {
    var canvas = $("timeline");
    if (!canvas || !state.timeline) return;
    var data = state.timeline, lanes = data.lanes.length, ratio = window.devicePixelRatio || 1;
    $("timeline-note").textContent = data.marks.length + " place" + (data.marks.length === 1 ? "" : "s") + " to look, " +
      (data.tracks_ready ? lanes + " track" + (lanes === 1 ? "" : "s") : "finding tracks…");
    var width = canvas.clientWidth, laneH = Math.max(4, Math.min(14, (100 - 16) / Math.max(1, lanes)));
    var height = 18 + lanes * laneH + 4;
    canvas.width = width * ratio; canvas.height = height * ratio; canvas.style.height = height + "px";
    var g = canvas.getContext("2d"); g.scale(ratio, ratio);
    var x = function (f) { return f / Math.max(1, data.frames - 1) * (width - 2) + 1; };
    g.fillStyle = "#f3f4f6"; g.fillRect(0, 0, width, height);
    g.fillStyle = "#f59e0b";
    data.marks.forEach(function (m) { g.fillRect(x(m) - 0.5, 2, 1.5, 12); });
    data.lanes.forEach(function (lane, n) {
      var y = 18 + n * laneH, removed = edits.tracks[lane.track] || state.recorded.tracks[lane.track];
      var colour = removed ? "#d1d5db" : lane.kind === 0 ? "#4338ca" : "#0d9488";
      g.fillStyle = colour; g.globalAlpha = 0.35;  // the whole span: gaps are bridged by the tracker
      g.fillRect(x(lane.runs[0][0]), y + laneH * 0.35, Math.max(1, x(lane.runs[lane.runs.length - 1][1]) - x(lane.runs[0][0])), laneH * 0.3);
      g.globalAlpha = 1;
      lane.runs.forEach(function (r) { g.fillRect(x(r[0]), y, Math.max(1.5, x(r[1]) - x(r[0])), laneH - 1); });
    });
    edits.added.concat(state.recorded.added).forEach(function (a) {
      var keys = Object.keys(a.frames).map(Number);
      g.fillStyle = "#0284c7";
      g.fillRect(x(Math.min.apply(null, keys)), 14, Math.max(2, x(Math.max.apply(null, keys)) - x(Math.min.apply(null, keys))), 3);
    });
    g.fillStyle = "#dc2626"; g.fillRect(x(state.frame) - 1, 0, 2, height);
    canvas.dataset.marks = data.marks.length;  // loaded
  }
  if (isVideo) {
    $("scrubber").addEventListener("input", function () { show(Number($("scrubber").value)); });
    $("prev-frame").addEventListener("click", function () { show(state.frame - 1); });
    $("next-frame").addEventListener("click", function () { show(state.frame + 1); });
    $("prev-place").addEventListener("click", function () { place(-1); });
    $("next-place").addEventListener("click", function () { place(1); });
    $("play").addEventListener("click", play);
    $("timeline").addEventListener("click", function (event) {
      var r = event.currentTarget.getBoundingClientRect();
      show(Math.round((event.clientX - r.left) / r.width * (setup.frames - 1)));
    });
    window.addEventListener("resize", drawTimeline);
  }
  var playing = null;
  function play() {  // a few seconds at review resolution: the next frame once the last one is shown
    if (playing) { clearInterval(playing); playing = null; $("play").textContent = "Play"; return; }
    var stop = Math.min(setup.frames - 1, state.frame + Math.round((setup.fps || 25) * 5));
    $("play").textContent = "Pause";
    playing = setInterval(function () {
      if (!picture.complete) return;
      if (state.frame >= stop) { play(); return; }
      show(state.frame + 1);
    }, 1000 / Math.min(setup.fps || 25, 12));
  }

  // ------------------------------------------------------------------ keyboard
  document.addEventListener("keydown", function (event) {
    if (event.target.closest("input[type=text], textarea, select, dialog") || event.ctrlKey || event.metaKey || event.altKey) return;
    var key = event.key, handled = true;
    if (isVideo && key === "ArrowRight") show(state.frame + (event.shiftKey ? 10 : 1));
    else if (isVideo && key === "ArrowLeft") show(state.frame - (event.shiftKey ? 10 : 1));
    else if (isVideo && key === " ") play();
    else if (key === "n" || key === "N") place(1);
    else if (key === "p" || key === "P") place(-1);
    else if (key === "t" || key === "T") {
      var c = current().filter(function (x) { return x.id === state.selected; })[0];
      if (c) toggle(c, event.shiftKey);
    } else if (key === "Delete" || key === "Backspace") removeSelected();
    else if (key === "f" || key === "F") setKind("face");
    else if (key === "l" || key === "L") setKind("plate");
    else if (key === "Escape") { state.selected = null; draw(); }
    else if (key === "r" || key === "R") askRender();
    else if (key === "+" || key === "=") zoom(1);
    else if (key === "-") zoom(-1);
    else if (key === "0") zoom(0);
    else handled = false;
    if (handled && event.target.type !== "range") event.preventDefault();
  });

  // ------------------------------------------------------------------ render, progress, before/after
  function request() {
    var all = allEdits(), body = { model_config: {}, edits: {} };
    all[setup.task] = edits;
    Object.keys(all).forEach(function (task) {
      var e = all[task], out = [];
      var removed = Object.keys(e.removed || {}), kept = Object.keys(e.kept || {});
      if (removed.length) out.push({ op: "remove", ids: removed });
      if (kept.length) out.push({ op: "keep", ids: kept });
      Object.keys(e.tracks || {}).forEach(function (t) { out.push({ op: "remove_track", track: Number(t) }); });
      (e.added || []).forEach(function (a) { out.push({ op: "add", kind: a.kind, frames: a.frames }); });
      if (out.length) body.edits[task] = out;
    });
    KINDS.forEach(function (k) {
      if (setup.kinds[k] && Math.abs(state.thresholds[k] - setup.thresholds[k]) > 1e-6) body.model_config[k === "face" ? "blur_threshold" : "lp_threshold"] = state.thresholds[k];
    });
    return body;
  }
  $("render").addEventListener("click", askRender);
  function askRender() {
    if (!setup.canEdit) return;
    var body = request(), n = Object.keys(body.edits).reduce(function (s, k) { return s + body.edits[k].length; }, 0);
    $("confirm-text").textContent = "With " + n + " edit" + (n === 1 ? "" : "s") +
      (Object.keys(body.model_config).length ? " and " + Object.keys(body.model_config).map(function (k) { return k + " " + body.model_config[k]; }).join(", ") : "") + ".";
    var dialog = $("confirm");
    dialog.returnValue = "";
    dialog.showModal();
    dialog.addEventListener("close", function once() {
      dialog.removeEventListener("close", once);
      if (dialog.returnValue === "ok") send(body);
    });
  }
  function send(body) {
    $("render").disabled = true;
    api("/admin/jobs/" + setup.job + "/render", body).then(function (data) {
      if (data._status !== 202) { notice(data.error || "The render was refused (" + data._status + ")."); $("render").disabled = false; return; }
      sessionStorage.removeItem(storeKey);
      edits = mine();
      $("render-progress").hidden = false;
      follow();
    });
  }
  function notice(text) { var n = $("notice"); n.textContent = text; n.hidden = !text; }
  function follow() {
    api("/admin/jobs/progress?id=" + setup.job).then(function (found) {
      var p = found[setup.job];
      if (p) {
        var bar = $("render-progress");
        bar.querySelector(".progress-fill").style.width = p.percent + "%";
        bar.querySelector(".progress-fill").className = "progress-fill progress-" + p.state;
        bar.querySelector(".progress-label").textContent = p.percent + " %";
        bar.querySelector("[data-progress]").setAttribute("aria-valuenow", p.percent);
        var badge = document.querySelector("#review-job [data-state] .badge");
        if (badge) { badge.textContent = p.state.replace(/_/g, " "); badge.className = "badge badge-" + p.state; }
        if (p.final) { done(p.state); return; }
      }
      setTimeout(follow, 1000);
    });
  }
  function done(final) {
    if (final !== "completed") { notice("The render ended " + final + ": see the job's page."); return; }
    stamp = "&v=" + Date.now();
    setup.rendered = true;
    compare();
    $("render").disabled = false;
  }
  var stamp = "&v=" + Date.now();
  function compare() {
    $("compare-before").src = base + "/before.jpg?frame=" + state.frame;
    $("compare-after").src = base + "/after.jpg?frame=" + state.frame + stamp;
    $("compare").hidden = false;
  }

  // ------------------------------------------------------------------ claim: renewed while open, released on leaving
  function renew() {
    api("/admin/jobs/" + setup.job + "/claim", {}).then(function (data) {
      var box = $("claim");
      if (!data.holder) return;
      box.hidden = false;
      box.className = "claim" + (data.holder === setup.me ? "" : " claim-other");
      box.textContent = data.holder === setup.me ? "You are reviewing this job: others see that."
        : data.holder + " is reviewing this job: your changes may cross theirs.";
    });
  }
  if (setup.canEdit) {
    setInterval(renew, 30000);
    window.addEventListener("pagehide", function () { api("/admin/jobs/" + setup.job + "/release", {}); });
  }

  window.addEventListener("resize", function () { zoom(); });
  zoom(0);
  picture.addEventListener("load", draw);
  if (setup.rendered) compare();
  if (isVideo) loadTimeline();
  show(0);
})();
