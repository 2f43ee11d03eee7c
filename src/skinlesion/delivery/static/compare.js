// "Compare two visits" mode of the web page: POST two images of one lesion to /compare and show
// the verdict, the registered images, the ABCDE change and the model change. Uses el, fmt and
// apiKeyHeaders from app.js; every value from the server goes in through textContent.
"use strict";

const cmp = (id) => document.getElementById(id);
const SINGLE_ONLY = () => [cmp("dropzone"), cmp("status"), cmp("error"), cmp("result"), cmp("spacing").closest("label")];

function setMode(mode) {
  const compare = mode === "compare";
  for (const node of SINGLE_ONLY()) {
    if (!node) continue;
    if (compare) { node.dataset.wasHidden = String(node.hidden); node.hidden = true; }
    else if (node.dataset.wasHidden !== undefined) { node.hidden = node.dataset.wasHidden === "true"; delete node.dataset.wasHidden; }
  }
  cmp("compare").hidden = !compare;
  document.body.dataset.mode = mode;
}

function compareError(status, reason, message) {
  cmp("compare-error-title").textContent = status >= 500 ? "Service error" : "Rejected";
  cmp("compare-error-reason").textContent = reason;
  cmp("compare-error-message").textContent = message;
  cmp("compare-error-status").textContent = status ? `(HTTP ${status})` : "(checked in the browser)";
  cmp("compare-error").hidden = false;
  cmp("compare-error").dataset.reason = reason;
  cmp("compare-result").hidden = true;
  cmp("compare-result").dataset.state = "error";
  cmp("compare-status").textContent = "";
}

function kvTable(node, rows, header) {
  node.replaceChildren();
  if (header) node.append(el("tr", {}, ...header.map((h) => el("th", {}, h))));
  for (const row of rows) {
    const tr = el("tr", row.attrs || {}, ...row.cells.map((c, i) => el(i === 0 && !header ? "th" : "td", {}, c)));
    node.append(tr);
  }
}

function sizeCells(ev, key, unit) {
  const d = ev[key];
  if (!d) return [ev.size_note || "not compared", "", ""];
  const rel = d.relative_change === null || d.relative_change === undefined ? "" : ` (${d.relative_change >= 0 ? "+" : ""}${(100 * d.relative_change).toFixed(0)}%)`;
  return [`${fmt(d.before, 2)} ${unit}`, `${fmt(d.after, 2)} ${unit}`, `${d.change >= 0 ? "+" : ""}${fmt(d.change, 2)} ${unit}${rel}`];
}

const colourList = (a) => (a ? (a.colours.map((c) => `${c.replace(/_/g, " ")} (${fmt(a.colour_fractions[c], 2)})`).join(", ") || "none") : "n/a");
const signed = (x, d) => `${x >= 0 ? "+" : ""}${fmt(x, d)}`;

function renderChanges(res) {
  const ev = res.evolution;
  const box = cmp("compare-changes");
  if (!ev) { kvTable(box, [{ cells: ["ABCDE", "not measured: a lesion was not found in both images"] }]); return; }
  const unit = ev.unit === "mm" ? "mm" : ev.unit === "px" ? "px" : "";
  const named = (xs) => xs.map((c) => c.replace(/_/g, " ")).join(", ") || "none";
  kvTable(box, [
    { cells: ["D: diameter", ...sizeCells(ev, "diameter", unit)] },
    { cells: ["Area", ...sizeCells(ev, "area", unit ? `${unit}²` : "")] },
    { cells: ["A: asymmetric axes (of 2)", String(ev.asymmetric_axes.before), String(ev.asymmetric_axes.after), signed(ev.asymmetric_axes.change, 0)] },
    { cells: ["A: shape asymmetry", fmt(ev.asymmetry.before), fmt(ev.asymmetry.after), signed(ev.asymmetry.change, 3)] },
    { cells: ["B: abrupt border sectors (of 8)", String(ev.border.abrupt_sectors.before), String(ev.border.abrupt_sectors.after), signed(ev.border.abrupt_sectors.change, 0)] },
    { cells: ["C: colours", colourList(res.before.abcde), colourList(res.after.abcde), `new: ${named(ev.colours_gained)}; lost: ${named(ev.colours_lost)}`] },
  ], ["Measurement", "Earlier", "Later", "Change"]);
  box.dataset.unit = ev.unit;
}

function renderModel(res) {
  const box = cmp("compare-model");
  box.replaceChildren();
  const m = res.model;
  if (!m) { box.append(el("p", { class: "muted" }, "No model was run.")); return; }
  const flag = (v) => (v === null || v === undefined ? "not available" : v ? "REVIEW" : "not flagged");
  box.append(
    el("p", {}, `Decision: ${m.decision.before} → ${m.decision.after}` + (m.decision.changed ? " (changed)." : " (unchanged).")),
    el("p", {}, `Review flag: ${flag(m.review_flag.before)} → ${flag(m.review_flag.after)}.`),
  );
  const t = el("table", { class: "kv", id: "compare-probs" });
  kvTable(t, Object.entries(m.probabilities).map(([c, v]) => ({ cells: [c, fmt(v.before), fmt(v.after), signed(v.change, 3)], attrs: { "data-class": c } })),
    ["Class", "Earlier", "Later", "Change"]);
  box.append(t);
  const other = (m.changed_fields || []).filter((f) => f.field !== "prediction.decision" && f.field !== "uncertainty.review.flag");
  for (const f of other) box.append(el("p", { class: "small" }, `${f.field}: ${f.before} → ${f.after}`));
}

function renderComparison(res) {
  const s = res.summary;
  const v = cmp("compare-verdict");
  v.textContent = s.verdict.charAt(0).toUpperCase() + s.verdict.slice(1);
  v.className = "verdict " + (s.significant === true ? "changed" : s.significant === false ? "unchanged" : "unknown");
  v.dataset.verdict = s.verdict;
  cmp("compare-text").textContent = s.text;
  kvTable(cmp("compare-criteria"), s.criteria.map((c) => ({
    cells: [c.name.replace(/_/g, " "), c.description, c.assessed ? (c.fired ? "reached" : "not reached") : "not assessed", c.detail],
    attrs: { class: c.fired ? "fired" : "", "data-criterion": c.name },
  })), ["Criterion", "What it measures", "Threshold", "Value"]);
  cmp("compare-rule").textContent = `Rule: ${s.rule}. Thresholds: ${s.rule_chosen}.`;
  cmp("compare-caveats").replaceChildren(...(s.caveats || []).map((c) => el("p", { class: "small" }, `Caveat: ${c}.`)));
  cmp("compare-before-img").src = `data:image/png;base64,${res.before_png}`;
  cmp("compare-after-img").src = `data:image/png;base64,${res.after_png}`;
  const r = res.registration;
  cmp("compare-registration").textContent = `Registration fit ${r.fit}: normalised cross-correlation ${fmt(r.ncc)} after registration`
    + (r.ncc_unregistered !== null && r.ncc_unregistered !== undefined ? ` (${fmt(r.ncc_unregistered)} as given)` : "")
    + `, segmentations overlap (Dice) ${fmt(r.mask_dice, 2)}; rotation ${fmt(r.rotation_deg, 1)}°, scale ${fmt(r.scale)} (${r.scale_source}).`;
  cmp("compare-registration").dataset.fit = r.fit;
  renderChanges(res);
  renderModel(res);
  const b = res.bundle || {};
  const input = (x) => `${x.input.name || "upload"}: ${x.input.width} × ${x.input.height} px, sha256 ${x.input.sha256}, spacing ${x.pixel_spacing_mm === null ? "unknown" : `${x.pixel_spacing_mm} mm`}`;
  kvTable(cmp("compare-provenance"), [
    { cells: ["Earlier image", input(res.before)] },
    { cells: ["Later image", input(res.after)] },
    { cells: ["Bundle", `${b.name || ""} ${b.id || "no model"}`] },
    { cells: ["Request", `${res.request_id}; ${fmt(res.elapsed_ms, 0)} ms`] },
    { cells: ["Audit", res.audit_error ? `NOT recorded: ${res.audit_error}` : res.audit_ids.length ? `recorded (rows ${res.audit_ids.join(", ")})` : "no audit log"] },
  ]);
  cmp("notice").textContent = res.notice;
}

async function runComparison() {
  const files = [cmp("compare-before").files[0], cmp("compare-after").files[0]];
  cmp("compare-error").hidden = true;
  if (!files[0] || !files[1]) { compareError(null, "missing_file", `choose the ${files[0] ? "later" : "earlier"} image`); return; }
  for (const [k, f] of files.entries()) {
    if (state.maxUpload !== null && f.size > state.maxUpload) {
      compareError(null, "too_large", `${k ? "after" : "before"}: the file is ${f.size.toLocaleString()} bytes; the limit is ${state.maxUpload.toLocaleString()}`);
      return;
    }
  }
  const form = new FormData();
  form.append("before", files[0], files[0].name);
  form.append("after", files[1], files[1].name);
  const sb = cmp("compare-before-spacing").value.trim(), sa = cmp("compare-after-spacing").value.trim();
  if (sb) form.append("before_spacing_mm", sb);
  if (sa) form.append("after_spacing_mm", sa);
  for (const field of ["age", "sex", "site"]) {
    const value = cmp(field).value.trim();
    if (value) form.append(field, value);
  }
  cmp("compare-status").textContent = `Comparing ${files[0].name} and ${files[1].name}…`;
  cmp("compare-result").dataset.state = "loading";
  let r, body;
  try {
    r = await fetch("/compare", { method: "POST", body: form, headers: apiKeyHeaders() });
    body = await r.json();
  } catch (e) {
    compareError(r ? r.status : null, "network_error", `no usable answer from the service (${e})`);
    return;
  }
  if (!r.ok) {
    const d = body && body.detail;
    if (d && typeof d === "object" && !Array.isArray(d)) compareError(r.status, d.reason || "error", d.message || JSON.stringify(d));
    else compareError(r.status, "error", JSON.stringify(d));
    return;
  }
  renderComparison(body);
  await Promise.all(["compare-before-img", "compare-after-img"].map((id) => cmp(id).decode().catch(() => null)));
  cmp("compare-status").textContent = `Done: ${files[0].name} → ${files[1].name}.`;
  cmp("compare-result").hidden = false;
  cmp("compare-result").dataset.state = "done";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", () => setMode(radio.value));
  cmp("compare-run").addEventListener("click", runComparison);
});
