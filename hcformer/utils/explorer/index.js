"use strict";
// The index of the hierarchy explorer: the dataset's pixel-weighted UE / ASA per clustering as
// two small line plots, and every image as a thumbnail linking to its page, sortable by UE at
// any clustering so that the worst leaks come first. hcformer/utils/hierarchy_page.py writes
// the embedded JSON (index_page_data).

const data = JSON.parse(document.getElementById("explorer-data").textContent);
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function label(c) {
  if (c.name === "queries") return "Q";
  return c.stride === null ? c.name.replace("level", "L") : String(c.stride);
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// One plot: a value per clustering (x: the clusterings, finest first; y: from 0 to a round
// number above the largest value, or to 1 for accuracies).
function linePlot(title, values, upper) {
  const width = 320;
  const height = 190;
  const left = 46;
  const right = 12;
  const top = 24;
  const bottom = 34;
  const svg = svgElement("svg", { class: "plot", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  svg.appendChild(svgElement("title", {}, title));
  svg.appendChild(svgElement("text", { x: left, y: 15, "font-weight": 600 }, title));
  const n = values.length;
  const x = (i) => left + (n === 1 ? (width - left - right) / 2 : (i * (width - left - right)) / (n - 1));
  const y = (v) => top + (1 - v / upper) * (height - top - bottom);
  for (let k = 0; k <= 4; k++) {
    const v = (upper * k) / 4;
    svg.appendChild(svgElement("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    svg.appendChild(svgElement("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(upper < 0.1 ? 3 : 2)));
  }
  svg.appendChild(svgElement("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
  data.clusterings.forEach((c, i) => {
    svg.appendChild(svgElement("text", { x: x(i), y: height - bottom + 16, "text-anchor": "middle" }, label(c)));
  });
  svg.appendChild(svgElement("text", { x: width - right, y: height - 3, "text-anchor": "end" }, "stride (Q: queries)"));
  const points = values.map((v, i) => (v === null ? null : [x(i), y(v)])).filter((p) => p !== null);
  svg.appendChild(svgElement("polyline", { class: "curve", points: points.map((p) => p.join(",")).join(" ") }));
  values.forEach((v, i) => {
    if (v === null) return;
    const point = svgElement("circle", { class: "point", cx: x(i), cy: y(v), r: 3.5 });
    point.appendChild(svgElement("title", {}, `${data.clusterings[i].name}: ${v.toFixed(4)}`));
    svg.appendChild(point);
  });
  return svg;
}

function roundUp(value) {
  if (!(value > 0)) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  return Math.ceil((value * 1.05) / step) * step;
}

function drawPlots() {
  const mean = data.mean || {};
  const scored = data.clusterings.filter((c) => mean[c.name]);
  if (scored.length === 0) {
    $("summary-note").textContent = "No ground truth: the images are not scored, only their clusterings are shown.";
    return;
  }
  const ue = data.clusterings.map((c) => (mean[c.name] ? mean[c.name].UE_pixel_weighted : null));
  const asa = data.clusterings.map((c) => (mean[c.name] ? mean[c.name].ASA_pixel_weighted : null));
  $("plots").appendChild(linePlot("UE (pixel-weighted, lower is better)", ue, roundUp(Math.max(...ue.filter((v) => v !== null)))));
  $("plots").appendChild(linePlot("ASA (pixel-weighted, higher is better)", asa, 1));
  $("summary-note").textContent =
    `${data.images.length} images. Pixel-weighted means: Σ leaked (or achievable) pixels / Σ labelled pixels over ` +
    "the dataset, what TEST.HIERARCHY_EVAL reports.";
}

function score(image, name) {
  const c = image.clusterings.find((x) => x.name === name);
  return c && c.scores && c.scores.UE !== null ? c.scores.UE : null;
}

function fillSortOptions() {
  const select = $("sort-by");
  const scored = data.images.some((image) => image.clusterings.some((c) => c.scores));
  const original = new Option("dataset order", "");
  select.appendChild(original);
  if (!scored) return;
  for (const c of data.clusterings) {
    const what = c.name === "queries" ? "the query clustering" : `${c.name}${c.stride === null ? "" : ` (stride ${c.stride})`}`;
    select.appendChild(new Option(`UE at ${what}`, c.name));
  }
  // the coarsest level by default: the hierarchy's leaks have all added up there
  const levels = data.clusterings.filter((c) => c.name !== "queries");
  select.value = (levels.length ? levels[levels.length - 1] : data.clusterings[0]).name;
}

function drawThumbnails() {
  const by = $("sort-by").value;
  const descending = $("sort-descending").checked;
  const order = data.images.map((image, i) => i);
  if (by) {
    // unscored images last, whichever the direction
    const key = (i) => score(data.images[i], by);
    order.sort((a, b) => {
      const ka = key(a);
      const kb = key(b);
      if (ka === null || kb === null) return (ka === null) - (kb === null) || a - b;
      return (descending ? kb - ka : ka - kb) || a - b;
    });
  }
  const list = $("images");
  list.replaceChildren();
  for (const i of order) {
    const image = data.images[i];
    const item = document.createElement("li");
    item.dataset.imageId = image.image_id;
    const link = document.createElement("a");
    link.href = image.page;
    const thumbnail = document.createElement("img");
    thumbnail.src = image.thumbnail;
    thumbnail.alt = image.image_id;
    link.appendChild(thumbnail);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = image.image_id;
    link.appendChild(name);
    item.appendChild(link);
    const detail = document.createElement("div");
    detail.className = "score";
    if (by) {
      const value = score(image, by);
      detail.textContent = value === null ? "not scored" : `UE ${value.toFixed(4)}`;
    } else {
      const finest = image.clusterings[0];
      detail.textContent = finest ? `${finest.num_clusters} clusters at ${finest.name}` : "";
    }
    item.appendChild(detail);
    list.appendChild(item);
  }
}

drawPlots();
fillSortOptions();
$("sort-by").addEventListener("change", drawThumbnails);
$("sort-descending").addEventListener("change", drawThumbnails);
drawThumbnails();
document.body.dataset.ready = "true";
