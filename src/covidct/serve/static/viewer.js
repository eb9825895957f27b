// covidct viewer: upload a study, poll its job, scroll slices with overlays, show the curve and the rule.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const COLOURS = ["#6a9ee6", "#f0a060", "#ff6b6b"];
  const state = { id: null, n: 0, index: 0, result: null, urls: new Map() };

  function token() { return ($("token").value || sessionStorage.getItem("covidct-token") || "").trim(); }
  function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }
  function setStatus(text) { $("status").textContent = text; }

  async function errorText(resp) {
    try { const body = await resp.json(); return body.detail || body.error || resp.statusText; }
    catch (e) { return resp.statusText; }
  }

  // --- upload ------------------------------------------------------------------------------------
  function upload(file) {
    if (!file) { setStatus("Choose a study file first."); return; }
    if ($("token").value) sessionStorage.setItem("covidct-token", $("token").value.trim());
    const form = new FormData();
    form.append("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/studies");
    const h = authHeaders();
    if (h.Authorization) xhr.setRequestHeader("Authorization", h.Authorization);
    $("progress").hidden = false; $("progress").value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        $("progress").value = Math.round((100 * e.loaded) / e.total);
        setStatus("Uploading… " + $("progress").value + " %");
      }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 202) { state.id = body.id; setStatus("Uploaded; queued for diagnosis…"); poll(Date.now()); }
      else { $("progress").hidden = true; setStatus("Upload refused (" + xhr.status + "): " + (body.detail || xhr.statusText)); }
    };
    xhr.onerror = () => setStatus("Upload failed: the service did not answer.");
    xhr.send(form);
  }

  async function poll(t0) {
    const resp = await fetch("/v1/studies/" + state.id, { headers: authHeaders() });
    const body = await resp.json().catch(() => ({}));
    const secs = ((Date.now() - t0) / 1000).toFixed(0);
    if (resp.ok && body.status === "done") { $("progress").hidden = true; show(body); return; }
    if (!resp.ok || body.status === "failed") {
      $("progress").hidden = true;
      setStatus("Diagnosis failed: " + (body.error || body.detail || resp.statusText));
      return;
    }
    $("progress").removeAttribute("value");
    setStatus((body.status === "running" ? "Diagnosing… " : "Queued… ") + secs + " s");
    setTimeout(() => poll(t0), 400);
  }

  // --- result --------------------------------------------------------------------------------------
  // value and threshold as percentages, with as many decimals (up to 2) as it takes for them to differ
  function percents(value, threshold) {
    const finite = typeof threshold === "number";
    let digits = 0;
    while (finite && digits < 2 && value !== threshold &&
      (100 * value).toFixed(digits) === (100 * threshold).toFixed(digits)) digits++;
    return [(100 * value).toFixed(digits) + " %", finite ? (100 * threshold).toFixed(digits) + " %" : null];
  }

  // the confidence of the answer and the referral advice (results.confidence; absent: nothing shown)
  function showConfidence(c) {
    const conf = $("confidence"), referral = $("referral"), badge = $("refer-badge");
    conf.hidden = referral.hidden = !c;
    badge.hidden = !c || c.refer !== true;
    if (!c) return;
    const [value, threshold] = percents(c.value, c.threshold);
    conf.textContent = "Confidence " + value + " (" + (c.calibrated ? "calibrated" : "not calibrated") + ")";
    conf.title = c.calibrated
      ? "the probability of this answer after temperature scaling on validation patients"
      : "the model's probability of this answer as it is: not calibrated on validation patients";
    conf.dataset.value = String(c.value);
    const where = threshold !== null ? "the model's threshold (" + threshold + ")"
      : "the model's threshold (no confidence reached the target accuracy on validation patients, so every study is referred)";
    if (c.refer === null || c.refer === undefined || c.threshold === null) {
      referral.textContent = "No referral threshold was fitted for this model: it gives no advice on referral.";
    } else if (c.refer) {
      referral.textContent = "Refer to a radiologist: confidence below " + where;
    } else {
      referral.textContent = "Not referred: confidence at or above " + where;
    }
    referral.className = c.refer === true ? "refer" : "note";
  }

  function show(body) {
    const r = body.result;
    state.result = r; state.n = r.n_slices; state.urls.clear();
    $("lesion-label").hidden = !r.involvement;
    const names = body.display_names || {};
    setStatus("Done in " + (r.timing_s.total !== undefined ? r.timing_s.total.toFixed(1) + " s" : "") + ".");
    $("viewer").hidden = false;
    $("viewer").dataset.study = state.id;
    $("diagnosis").textContent = names[r.diagnosis] || r.diagnosis;
    showConfidence(r.confidence);
    const counts = $("counts"); counts.innerHTML = "";
    r.classes.forEach((c) => {
      const tr = document.createElement("tr");
      const frac = r.rule.fractions && r.rule.fractions[c] !== null ? (100 * r.rule.fractions[c]).toFixed(1) + " %" : "";
      tr.innerHTML = "<th></th><td></td><td></td>";
      tr.children[0].textContent = names[c] || c;
      tr.children[1].textContent = (r.counts[c] || 0) + " slices";
      tr.children[2].textContent = frac;
      counts.appendChild(tr);
    });
    $("trace").textContent = body.explanation || r.rule.explanation || "";
    const lv = r.lung_volume_ml || {};
    $("volumes").textContent = "Lung volumes: right " + lv.right + " ml, left " + lv.left + " ml. Model: " +
      (r.model.name || "") + " " + (r.model.version || "");
    $("slider").max = String(state.n - 1);
    const kept = r.kept_slices && r.kept_slices.length ? r.kept_slices : [0];
    goTo(kept[Math.floor(kept.length / 2)]);
    $("stack").focus();
  }

  async function blobUrl(url) {
    if (state.urls.has(url)) return state.urls.get(url);
    const resp = await fetch(url, { headers: authHeaders() });
    if (!resp.ok) throw new Error(await errorText(resp));
    const u = URL.createObjectURL(await resp.blob());
    if (state.urls.size > 600) { // bound the cache: forget the oldest
      const first = state.urls.keys().next().value; URL.revokeObjectURL(state.urls.get(first)); state.urls.delete(first);
    }
    state.urls.set(url, u);
    return u;
  }

  async function setLayer(img, url, on) {
    img.hidden = !on;
    if (!on) return;
    try { const u = await blobUrl(url); if (img.dataset.want === url) img.src = u; }
    catch (e) { setStatus("Could not load an image: " + e.message); }
  }

  function goTo(i) {
    if (!state.result) return;
    i = Math.max(0, Math.min(state.n - 1, i));
    state.index = i;
    $("slider").value = String(i);
    $("slice-index").textContent = "slice " + i + " / " + (state.n - 1);
    const base = "/v1/studies/" + state.id;
    const layers = [["slice-img", base + "/slices/" + i + ".png", true],
      ["mask-img", base + "/mask/" + i + ".png", $("toggle-mask").checked],
      ["heat-img", base + "/heatmap/" + i + ".png", $("toggle-heat").checked],
      ["lesion-img", base + "/lesions/" + i + ".png", $("toggle-lesions").checked && !!state.result.involvement]];
    layers.forEach(([id, url, on]) => { $(id).dataset.want = url; $(id).dataset.index = String(i); setLayer($(id), url, on); });
    const p = state.result.slice_probabilities[i];
    const kept = state.result.kept_slices.includes(i);
    $("slice-pred").textContent = p && p[0] !== null
      ? "P: " + state.result.classes.map((c, k) => c + " " + p[k].toFixed(2)).join(", ") + (kept ? "" : " (not kept)")
      : "not classified (outside the kept range)";
    drawCurve();
  }

  function drawCurve() {
    const r = state.result, cv = $("curve"), g = cv.getContext("2d");
    const W = cv.width, H = cv.height, pad = 20, n = Math.max(1, state.n - 1);
    const x = (i) => pad + ((W - 2 * pad) * i) / n, y = (p) => H - pad - (H - 2 * pad) * p;
    g.clearRect(0, 0, W, H);
    if (r.kept_slices.length) {
      g.fillStyle = "#2a2f36";
      g.fillRect(x(r.kept_slices[0]) - 1, pad, x(r.kept_slices[r.kept_slices.length - 1]) - x(r.kept_slices[0]) + 2, H - 2 * pad);
    }
    g.strokeStyle = "#555"; g.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
    for (let c = 0; c < 3; c++) {
      g.strokeStyle = COLOURS[c]; g.lineWidth = 1.5; g.beginPath();
      let drawing = false;
      r.slice_probabilities.forEach((row, i) => {
        if (!row || row[c] === null) { drawing = false; return; }
        if (drawing) g.lineTo(x(i), y(row[c])); else { g.moveTo(x(i), y(row[c])); drawing = true; }
      });
      g.stroke();
    }
    g.strokeStyle = "#fff"; g.lineWidth = 1; g.setLineDash([4, 3]);
    g.beginPath(); g.moveTo(x(state.index), pad - 6); g.lineTo(x(state.index), H - pad + 6); g.stroke();
    g.setLineDash([]);
    g.fillStyle = "#aaa"; g.font = "11px sans-serif"; g.fillText("superior", pad, H - 4);
    g.fillText("inferior", W - pad - 40, H - 4); g.fillText("slice " + state.index, Math.min(W - 60, x(state.index) + 4), 12);
    cv.dataset.marked = String(state.index);
  }

  async function download(path, name) {
    $("download-error").textContent = "";
    const resp = await fetch("/v1/studies/" + state.id + path, { headers: authHeaders() });
    if (!resp.ok) { $("download-error").textContent = name + ": " + (await errorText(resp)); return; }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await resp.blob()); a.download = name; a.click();
  }

  // --- events --------------------------------------------------------------------------------------
  $("upload-form").addEventListener("submit", (e) => { e.preventDefault(); upload($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files[0]); });
  $("stack").addEventListener("wheel", (e) => { e.preventDefault(); goTo(state.index + (e.deltaY > 0 ? 1 : -1)); }, { passive: false });
  document.addEventListener("keydown", (e) => {
    if (!state.result || e.target.tagName === "INPUT" && e.target.type !== "checkbox" && e.target.type !== "range") return;
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 }[e.key];
    if (step !== undefined) { e.preventDefault(); goTo(state.index + step); }
    else if (e.key === "Home") goTo(0); else if (e.key === "End") goTo(state.n - 1);
  });
  $("slider").addEventListener("input", () => goTo(parseInt($("slider").value, 10)));
  $("toggle-mask").addEventListener("change", () => goTo(state.index));
  $("toggle-heat").addEventListener("change", () => goTo(state.index));
  $("toggle-lesions").addEventListener("change", () => goTo(state.index));
  $("curve").addEventListener("click", (e) => {
    const cv = $("curve"), rect = cv.getBoundingClientRect(), pad = 20;
    const px = ((e.clientX - rect.left) * cv.width) / rect.width;
    goTo(Math.round(((px - pad) / (cv.width - 2 * pad)) * Math.max(1, state.n - 1)));
  });
  $("report-link").addEventListener("click", (e) => { e.preventDefault(); download("/report.html", "covidct-report.html"); });
  $("pdf-link").addEventListener("click", (e) => { e.preventDefault(); download("/report.pdf", "covidct-report.pdf"); });
  $("seg-link").addEventListener("click", (e) => { e.preventDefault(); download("/seg.dcm", "covidct-seg.dcm"); });
  const saved = sessionStorage.getItem("covidct-token"); if (saved) $("token").value = saved;
})();
