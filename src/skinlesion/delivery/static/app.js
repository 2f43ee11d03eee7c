// skinlesion web page: upload or drop an image, POST it to /explain, show the result.
// Vanilla JS, no external resources; every value from the server goes in through textContent.
"use strict";

const state = { maxUpload: null, keyRequired: false, modelMeta: {}, inputUrl: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "n/a" : Number(x).toFixed(d));
// entropies and review scores can be tiny: keep 3 significant digits instead of printing 0.0000
const fmtSmall = (x) => (typeof x === "number" && x !== 0 && Math.abs(x) < 1e-3 ? x.toExponential(2) : fmt(x, 4));

function apiKeyHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function loadHealth() {
  try {
    const r = await fetch("/health", { headers: apiKeyHeaders() });
    const h = await r.json();
    state.maxUpload = h.limits.max_upload_bytes;
    state.keyRequired = h.api_key_required;
    // With API keys, /health names the model only to a valid key.
    $("service").textContent = (h.bundle_id
      ? `Model: ${h.bundle_name || "bundle"} (id ${h.bundle_id.slice(0, 12)}…), engine ${h.engine}, version ${h.version}`
      : "Model: shown once a valid API key is entered")
      + (h.api_key_required ? "; an API key is required" : "");
    $("service").title = h.bundle_id ? `bundle id ${h.bundle_id}` : "";
    $("limits").textContent = `JPEG, PNG, TIFF, BMP, WebP or GIF (converted to 8-bit RGB); at most ${(h.limits.max_upload_bytes / 1048576).toFixed(1)} MiB `
      + `and ${(h.limits.max_pixels / 1e6).toFixed(1)} megapixels; each side at least ${h.limits.min_side} px.`;
    $("api-key-row").hidden = !h.api_key_required;
  } catch (e) {
    $("service").textContent = "The service does not answer /health.";
  }
}

async function modelMeta() {
  const key = $("api-key").value.trim();
  if (!(key in state.modelMeta)) {
    try {
      const r = await fetch("/model", { headers: apiKeyHeaders() });
      state.modelMeta[key] = r.ok ? (await r.json()).meta : null;
    } catch (e) {
      state.modelMeta[key] = null;
    }
  }
  return state.modelMeta[key];
}

function showError(status, reason, message) {
  $("error-title").textContent = status >= 500 ? "Service error" : "Rejected";
  $("error-reason").textContent = reason;
  $("error-message").textContent = message;
  $("error-status").textContent = status ? `(HTTP ${status})` : "(checked in the browser)";
  $("error").hidden = false;
  $("error").dataset.reason = reason;
  $("result").hidden = true;
  $("result").dataset.state = "error";
  $("status").textContent = "";
}

async function upload(file) {
  if (!file) return;
  $("error").hidden = true;
  if (state.maxUpload !== null && file.size > state.maxUpload) {
    showError(null, "too_large", `the file is ${file.size.toLocaleString()} bytes; the limit is ${state.maxUpload.toLocaleString()}`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const spacing = $("spacing").value.trim();
  if (spacing) form.append("pixel_spacing_mm", spacing);
  for (const field of ["age", "sex", "site"]) {
    const value = $(field).value.trim();
    if (value) form.append(field, value);
  }
  $("status").textContent = `Analysing ${file.name}…`;
  $("result").dataset.state = "loading";
  let r, body;
  try {
    r = await fetch("/explain", { method: "POST", body: form, headers: apiKeyHeaders() });
    body = await r.json();
  } catch (e) {
    showError(r ? r.status : null, "network_error", `no usable answer from the service (${e})`);
    return;
  }
  if (!r.ok) {
    const d = body && body.detail;
    if (d && typeof d === "object" && !Array.isArray(d)) showError(r.status, d.reason || "error", d.message || JSON.stringify(d));
    else showError(r.status, "error", JSON.stringify(d));
    return;
  }
  await render(body, file);
}

function probabilityBars(pred) {
  const box = $("probs");
  box.replaceChildren();
  for (const [cls, p] of Object.entries(pred.probabilities)) {
    const thr = pred.thresholds ? pred.thresholds[cls] : null;
    const track = el("div", { class: "prob-track" }, el("div", { class: "prob-fill", style: { width: `${(100 * p).toFixed(2)}%` } }));
    if (thr !== null && thr !== undefined) {
      track.append(el("div", { class: "thr", title: `threshold ${fmt(thr, 4)}`, style: { left: `${(100 * thr).toFixed(2)}%` }, "data-threshold": String(thr) }));
    }
    const row = el("div", { class: "prob-row" + (cls === pred.diagnosis ? " decided" : ""), "data-class": cls, "data-probability": String(p) },
      el("span", { class: "prob-label" }, cls), track, el("span", { class: "prob-value" }, fmt(p)));
    row.title = `${cls}: p = ${fmt(p, 4)}` + (thr !== null && thr !== undefined ? `, threshold ${fmt(thr, 4)}` : ", no threshold");
    box.append(row);
  }
}

function thresholdHow(pred, meta) {
  const c = pred.threshold_fired;
  if (!c) return pred.thresholds && Object.keys(pred.thresholds).length ? "No class reached its threshold." : "This bundle has no decision thresholds (argmax rule).";
  const point = meta && meta.decision ? (pred.operating_point_name === "without_metadata" ? meta.decision.without_metadata : meta.decision) : null;
  const t = point && point.thresholds ? point.thresholds[c] : null;
  if (!t) return "";
  const parts = [`Threshold of ${c} chosen on validation` + (pred.operating_point_name === "without_metadata" ? " with the metadata hidden" : "")];
  if (t.rule) parts.push(`rule: ${t.rule}`);
  if (t.status) parts.push(`targets ${t.status}`);
  if (t.sensitivity !== undefined) parts.push(`sensitivity ${fmt(t.sensitivity)}, specificity ${fmt(t.specificity)}`);
  return parts.join("; ") + ".";
}

// one plainly worded line per class flag, then the referral (each independent of the diagnosis)
function flagLines(pred) {
  const lines = (pred.flags || []).map((f) => el("li", { class: f.flagged ? "flag-on" : "flag-off", "data-class": f.class_name },
    (f.flagged ? "FLAG: " : "") + `${f.text} (p = ${fmt(f.probability)}, threshold ${fmt(f.threshold, 4)}; target ${f.target})`));
  const r = pred.referral;
  if (r) {
    lines.push(el("li", { class: r.refer ? "refer-on" : "refer-off", id: "referral" },
      `${r.text} (probability of a malignancy ${fmt(r.malignant_probability)}, threshold ${fmt(r.threshold, 4)}; target ${r.target})`));
  }
  $("flags").replaceChildren(...lines);
}

function oodWarning(ood) {
  const box = $("ood-warning");
  box.hidden = !(ood && ood.gated);
  box.textContent = box.hidden ? "" : `OUT OF DISTRIBUTION: ${ood.warning} (score ${fmt(ood.score, 3)} > threshold ${fmt(ood.threshold, 3)})`;
}

function review(unc) {
  const box = $("review");
  const flag = unc && unc.review ? unc.review.flag : null;
  box.className = "review " + (flag === true ? "flag" : flag === false ? "ok" : "none");
  box.dataset.flag = String(flag);
  if (!unc) box.textContent = "Uncertainty not computed (service started with --mc-samples 0): no review flag.";
  else if (flag === true) box.textContent = `REVIEW: uncertain (${unc.review.score} ${fmtSmall(unc.review.value)} vs threshold ${fmtSmall(unc.review.threshold)}); refer for expert review.`;
  else if (flag === false) box.textContent = `No review flag (${unc.review.score} ${fmtSmall(unc.review.value)}, threshold ${fmtSmall(unc.review.threshold)}).`;
  else box.textContent = unc.review.note || "This bundle has no review threshold.";
}

function uncertainty(unc) {
  const box = $("uncertainty");
  box.replaceChildren();
  if (!unc) { box.append(el("p", { class: "muted" }, "Not computed (--mc-samples 0).")); return; }
  const total = unc.predictive_entropy || 0;
  const a = unc.aleatoric_expected_entropy || 0, e = unc.epistemic_mutual_information || 0;
  const share = (x) => `${total > 0 ? (100 * x / total).toFixed(2) : 0}%`;
  box.append(
    el("p", {}, `Predictive entropy ${fmtSmall(total)} ${unc.units} = aleatoric ${fmtSmall(a)} + epistemic ${fmtSmall(e)}.`),
    el("div", { class: "split", title: "aleatoric | epistemic" }, el("div", { class: "alea", style: { width: share(a) } }), el("div", { class: "epi", style: { width: share(e) } })),
    el("p", { class: "small" }, el("span", { class: "key alea" }), "aleatoric (expected entropy: ambiguity in the image)  ",
      el("span", { class: "key epi" }), "epistemic (mutual information: the model is unsure)"),
    el("p", { class: "muted small" }, `${unc.method}; ${unc.n_samples} passes.`),
  );
  for (const w of unc.warnings || []) box.append(el("p", { class: "small" }, `Warning: ${w}`));
}

function metadataInfo(md) {
  // What the metadata fusion members received (the result's "metadata"); absent in older services.
  const box = $("metadata");
  if (!md) { box.replaceChildren(el("p", { class: "muted" }, "Not reported by this service.")); return; }
  const members = md.members_using_metadata || [];
  const parts = [];
  if (!members.length) {
    parts.push(el("p", { class: "muted" }, "This bundle's models use the image only; metadata is not used."));
  } else if (!md.used) {
    parts.push(el("p", {}, `Not given: predicted as if age, sex and site were unknown (members ${members.join(", ")} were trained for missing metadata).`));
  } else {
    const shown = Object.entries(md.used).map(([k, v]) => `${k} ${v === null ? "unknown" : v}`).join(", ");
    parts.push(el("p", {}, `Used by ${members.join(", ")}: ${shown}.`));
  }
  for (const [k, why] of Object.entries(md.ignored || {})) parts.push(el("p", { class: "muted small" }, `${k} not used: ${why}.`));
  box.replaceChildren(...parts);
}

function table(rows) {
  const t = el("table", { class: "kv" });
  for (const [k, v] of rows) t.append(el("tr", {}, el("th", {}, k), el("td", {}, v)));
  return t;
}

function abcde(result) {
  const box = $("abcde");
  box.replaceChildren();
  const a = result.abcde, tds = result.dermoscopy_score;
  if (!a) { box.append(el("p", {}, "No lesion was found by the segmentation: ABCDE and TDS were not measured.")); return; }
  const diameter = a.diameter_unit === "mm" ? `${fmt(a.diameter_mm, 1)} mm (${a.larger_than_6mm ? "larger" : "not larger"} than 6 mm)` : `${fmt(a.diameter_px, 0)} px (pixel spacing unknown)`;
  box.append(table([
    ["A: asymmetry", `${a.asymmetric_axes} of 2 axes asymmetric (shape asymmetry ${fmt(a.asymmetry)})`],
    ["B: border", `${a.abrupt_border_sectors} of 8 sectors abrupt; irregularity ${fmt(a.border_irregularity)}`],
    ["C: colours", `${a.colours.length}: ${a.colours.join(", ") || "none"}`],
    ["D: diameter", diameter],
    ["Segmentation", `${result.segmentation.quality} (${result.segmentation.method})`],
  ]));
  if (tds) {
    const c = tds.components;
    box.append(table([
      ["Total Dermoscopy Score", `${fmt(tds.score, 2)}: ${String(tds.band).replace(/_/g, " ")}`],
      ["Components", `A ${c.asymmetry}, B ${c.border}, C ${c.colours}, D ${c.structures}`],
      ["Structures", (tds.structures || []).join(", ") || "none detected"],
    ]));
  }
  box.append(el("p", { class: "muted small" }, a.notice || ""));
}

async function render(res, file) {
  const pred = res.prediction;
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  $("input-img").src = state.inputUrl;
  $("cam-img").src = `data:image/png;base64,${res.cam_png}`;
  $("mask-img").src = `data:image/png;base64,${res.mask_png}`;
  const att = res.attention || {};
  $("cam-caption").textContent = `${att.method || "CAM"} attention for ${att.class}` + (att.mass_in_lesion !== null && att.mass_in_lesion !== undefined ? `; ${fmt(100 * att.mass_in_lesion, 0)}% of it inside the lesion` : "");
  $("cam-faithfulness").textContent = (att.faithfulness && att.faithfulness.line) || "The faithfulness of this attention map has not been measured.";
  $("mask-caption").textContent = `Segmentation outline (${res.segmentation ? res.segmentation.quality : "n/a"})`;
  $("diagnosis").textContent = pred.diagnosis;
  $("diagnosis-rule").textContent = `${pred.diagnosis_rule}.` + (pred.operating_point ? ` Operating point: ${pred.operating_point}.` : "");
  flagLines(pred);
  oodWarning(res.ood);
  $("policy").textContent = pred.policy;
  $("decision").textContent = pred.decision;
  $("decided-by").textContent = `Decided by the ${pred.decided_by}.`;
  $("threshold-how").textContent = pred.policy === "priority-threshold" ? thresholdHow(pred, await modelMeta()) : "";
  $("argmax-note").textContent = pred.argmax !== pred.diagnosis ? `The most probable class is ${pred.argmax}; the diagnosis weighs the classes for balanced accuracy.` : "";
  probabilityBars(pred);
  review(res.uncertainty);
  uncertainty(res.uncertainty);
  metadataInfo(res.metadata);
  abcde(res);
  const b = res.bundle;
  $("provenance").replaceChildren(...table([
    ["Bundle", `${b.name || ""} ${b.id}`],
    ["Members", (b.members || []).join(", ")],
    ["Engine", b.engine || ""],
    ["Input", `${res.input.name || "upload"}: ${res.input.width} × ${res.input.height} px, sha256 ${res.input.sha256}`],
    ["Converted", res.converted_from ? `from ${res.converted_from.mode} ${res.converted_from.format || ""}: ${res.converted_from.steps.join("; ")}` : "no (8-bit RGB, upright)"],
    ["Request", `${res.request_id}; ${fmt(res.elapsed_ms, 0)} ms`],
    ["Audit", res.audit_error ? `NOT recorded: ${res.audit_error}` : res.audit_id !== null ? `recorded (row ${res.audit_id})` : "no audit log"],
  ]).children);
  $("notice").textContent = res.notice;
  await Promise.all(["input-img", "cam-img", "mask-img"].map((id) => $(id).decode().catch(() => null)));
  $("status").textContent = `Done: ${file.name}.`;
  $("result").hidden = false;
  $("result").dataset.state = "done";
}

function setup() {
  const zone = $("dropzone"), input = $("file");
  input.addEventListener("change", () => { upload(input.files[0]); input.value = ""; });
  zone.addEventListener("click", (e) => { if (e.target === zone || e.target.tagName === "P" || e.target.tagName === "STRONG") input.click(); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("api-key").addEventListener("change", loadHealth);
  loadHealth();
}

document.addEventListener("DOMContentLoaded", setup);
