"use strict";
// The hierarchy explorer of one image. hcformer/utils/hierarchy_page.py writes the page and
// documents the JSON embedded in it; this script only reads that JSON, so the page works from
// the file system, without a server or a network.
//
// Three canvases lie on top of each other, all at the image's own resolution (CSS scales them):
// the picture (photo or prediction, ground truth blended over it), the cluster boundaries of the
// chosen clustering, and the highlight of the hovered cluster. Each is redrawn only when what it
// shows changes, so that moving the mouse inside one cluster costs nothing.

const BOUNDARY_RGB = [255, 225, 0]; // the yellow of the PNG panels
const CLUSTER_RGBA = [0, 230, 120, 140]; // green: apart from the yellow boundaries
const PARENT_RGBA = [40, 120, 255, 90];
const LEAK_RGBA = [230, 20, 20, 235];
const GROUND_TRUTH_ALPHA = 0.55;
const IGNORED_SEGMENT = 0xffffff; // hierarchy_page.IGNORED_SEGMENT: an ignored ground-truth pixel
const DISPLAY_SIDE = 1100; // images are shown up to a whole multiple of their size near this (CSS px)

const data = JSON.parse(document.getElementById("explorer-data").textContent);
const W = data.width;
const H = data.height;
const clusterings = data.clusterings;
const segments = data.ground_truth ? data.ground_truth.segments : [];

const $ = (id) => document.getElementById(id);
const stage = $("stage");
const layers = { base: $("layer-base"), boundaries: $("layer-boundaries"), highlight: $("layer-highlight") };
const slider = $("level");

const state = {
  level: 0, // index into clusterings
  maps: [], // per clustering: Int32Array of its cluster ids (row-major), or the promise of it
  groundTruth: null, // Int32Array of segment indices, IGNORED_SEGMENT where ignored
  pictures: {}, // "photo" and each prediction kind → decoded picture
  groundTruthLayer: null, // canvas of the segments' colours, made when first shown
  pointer: null, // {x, y} of the hovered pixel, null outside the image
  hovered: "", // "level:cluster:parent" of what the highlight layer shows
};

// ------------------------------------------------------------------------------ decoding
function loadPicture(url, what) {
  return new Promise((resolve, reject) => {
    const picture = new Image();
    picture.onload = () => resolve(picture);
    picture.onerror = () => reject(new Error(`the embedded ${what} could not be decoded`));
    picture.src = url;
  });
}

// Ids are 24 bits per pixel: red is the high byte (hcformer/utils/embedded_id_maps.py). The PNG is
// opaque and has no colour profile, so the canvas hands back its bytes unchanged.
async function decodeIds(url, what) {
  const picture = await loadPicture(url, what);
  if (picture.naturalWidth !== W || picture.naturalHeight !== H) {
    throw new Error(`the ${what} is ${picture.naturalWidth}x${picture.naturalHeight}, expected ${W}x${H}`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = W;
  canvas.height = H;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(picture, 0, 0);
  const rgba = context.getImageData(0, 0, W, H).data;
  const ids = new Int32Array(W * H);
  for (let i = 0, j = 0; i < ids.length; i++, j += 4) {
    ids[i] = (rgba[j] << 16) | (rgba[j + 1] << 8) | rgba[j + 2];
  }
  return ids;
}

// A fixed colour per ground-truth segment, far from its neighbours in index order.
function segmentColour(index) {
  const hue = (index * 137.508) % 360; // golden angle
  const [r, g, b] = hslToRgb(hue / 360, 0.75, 0.55);
  return [r, g, b];
}

function hslToRgb(h, s, l) {
  const channel = (n) => {
    const k = (n + h * 12) % 12;
    const a = s * Math.min(l, 1 - l);
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [channel(0), channel(8), channel(4)];
}

function groundTruthLayer(groundTruth) {
  const canvas = document.createElement("canvas");
  canvas.width = W;
  canvas.height = H;
  const context = canvas.getContext("2d");
  const image = context.createImageData(W, H);
  const colours = segments.map((_, s) => segmentColour(s));
  for (let i = 0, j = 0; i < groundTruth.length; i++, j += 4) {
    const s = groundTruth[i];
    const [r, g, b] = s === IGNORED_SEGMENT ? [40, 40, 40] : colours[s];
    image.data[j] = r;
    image.data[j + 1] = g;
    image.data[j + 2] = b;
    image.data[j + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// ------------------------------------------------------------------------------ drawing
function clusteringName(index) {
  const c = clusterings[index];
  if (c.name === "queries") return "queries";
  const level = c.name.replace(/^level/, "level ");
  return c.stride === null ? level : `${level} · stride ${c.stride}`;
}

// The pictures other than the photo are decoded when first chosen: most visits never look at
// all of them, and each is a full-size JPEG to decode before the page could be ready.
async function picture(kind) {
  if (!(kind in state.pictures)) {
    state.pictures[kind] = await loadPicture(kind === "photo" ? data.photo : data.predictions[kind], `${kind} picture`);
  }
  return state.pictures[kind];
}

async function drawBase() {
  const kind = $("picture").value;
  const chosen = await picture(kind);
  if ($("picture").value !== kind) return; // another picture was chosen meanwhile: that call draws
  const context = layers.base.getContext("2d");
  context.globalAlpha = 1;
  context.drawImage(chosen, 0, 0);
  const withGroundTruth = $("show-ground-truth").checked && state.groundTruth !== null;
  if (withGroundTruth) {
    if (state.groundTruthLayer === null) state.groundTruthLayer = groundTruthLayer(state.groundTruth); // on first use
    context.globalAlpha = GROUND_TRUTH_ALPHA;
    context.drawImage(state.groundTruthLayer, 0, 0);
    context.globalAlpha = 1;
  }
  // what the canvas shows, e.g. "panoptic+ground truth": drawing is asynchronous, so a reader
  // (a test, a screenshot) waits for this rather than for the click
  layers.base.dataset.shows = withGroundTruth ? `${kind}+ground truth` : kind;
}

// The pixels whose right or lower neighbour lies in another cluster: the rule of the PNG panels
// (hierarchy_visualization.cluster_boundaries), so both show the same lines.
function drawBoundaries() {
  const context = layers.boundaries.getContext("2d");
  context.clearRect(0, 0, W, H);
  if (!$("show-boundaries").checked) return;
  const ids = state.maps[state.level];
  if (!(ids instanceof Int32Array)) return; // still decoding: selectLevel draws once it is done
  const image = context.createImageData(W, H);
  // one 32-bit store per pixel; the colour is packed through the same kind of view, so the
  // platform's byte order does not matter
  const pixels = new Uint32Array(image.data.buffer);
  const colour = new Uint32Array(new Uint8ClampedArray([...BOUNDARY_RGB, 255]).buffer)[0];
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x;
      if ((x + 1 < W && ids[i] !== ids[i + 1]) || (y + 1 < H && ids[i] !== ids[i + W])) pixels[i] = colour;
    }
  }
  context.putImageData(image, 0, 0);
}

// Size, majority segment and leaked pixels of cluster `id`, by the rule of
// hcformer.evaluation.leakage_mask: the majority is the most frequent segment over the cluster's
// labelled pixels (ties to the smaller index, i.e. the smaller segment id); a labelled pixel of
// another segment has leaked.
function clusterStatistics(ids, id) {
  const histogram = new Int32Array(segments.length);
  const groundTruth = state.groundTruth;
  let size = 0;
  let labelled = 0;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== id) continue;
    size++;
    if (groundTruth && groundTruth[i] !== IGNORED_SEGMENT) {
      labelled++;
      histogram[groundTruth[i]]++;
    }
  }
  let majority = -1;
  let best = 0;
  for (let s = 0; s < histogram.length; s++) {
    if (histogram[s] > best) {
      best = histogram[s];
      majority = s;
    }
  }
  return { size, labelled, majority, leaked: labelled - best };
}

function setPixel(pixels, i, rgba) {
  const j = 4 * i;
  pixels[j] = rgba[0];
  pixels[j + 1] = rgba[1];
  pixels[j + 2] = rgba[2];
  pixels[j + 3] = rgba[3];
}

// Paints the cluster (its leaked pixels red) and its parent; returns the parent's size.
function drawHighlight(ids, id, parentIds, parentId, majority) {
  const context = layers.highlight.getContext("2d");
  const image = context.createImageData(W, H);
  const pixels = image.data;
  const groundTruth = state.groundTruth;
  let parentSize = 0;
  for (let i = 0; i < ids.length; i++) {
    const inParent = parentIds !== null && parentIds[i] === parentId;
    if (inParent) parentSize++;
    if (ids[i] === id) {
      const s = groundTruth ? groundTruth[i] : IGNORED_SEGMENT;
      setPixel(pixels, i, s !== IGNORED_SEGMENT && s !== majority ? LEAK_RGBA : CLUSTER_RGBA);
    } else if (inParent) {
      setPixel(pixels, i, PARENT_RGBA);
    }
  }
  context.putImageData(image, 0, 0);
  return parentSize;
}

function clearHover() {
  state.pointer = null;
  state.hovered = "";
  layers.highlight.getContext("2d").clearRect(0, 0, W, H);
  for (const field of ["pixel", "cluster", "size", "class", "leaked", "parent"]) $(`hover-${field}`).textContent = "–";
}

function percent(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(1)} %` : "–";
}

function showHover() {
  if (state.pointer === null || !(state.maps[state.level] instanceof Int32Array)) return; // not decoded yet
  const { x, y } = state.pointer;
  const i = y * W + x;
  const level = state.level;
  const ids = state.maps[level];
  const parentLevel = level + 1 < clusterings.length ? level + 1 : null;
  const parentIds = parentLevel === null ? null : state.maps[parentLevel];
  const id = ids[i];
  const parentId = parentIds === null ? null : parentIds[i];
  $("hover-pixel").textContent = `x ${x}, y ${y}`;
  const key = `${level}:${id}:${parentId}`;
  if (key === state.hovered) return; // same cluster: nothing else changes
  state.hovered = key;

  const stats = clusterStatistics(ids, id);
  const parentSize = drawHighlight(ids, id, parentIds, parentId, stats.majority);
  $("hover-cluster").textContent = String(id);
  $("hover-size").textContent = `${stats.size} px` + (data.ground_truth ? ` (${stats.labelled} labelled)` : "");
  if (!data.ground_truth) {
    $("hover-class").textContent = "no ground truth";
    $("hover-leaked").textContent = "no ground truth";
  } else if (stats.majority < 0) {
    $("hover-class").textContent = "no labelled pixel";
    $("hover-leaked").textContent = "0 px";
  } else {
    const segment = segments[stats.majority];
    const name = segment.class === null ? "unnamed class" : segment.class;
    $("hover-class").textContent = `${name} (segment ${segment.id})`;
    $("hover-leaked").textContent = `${stats.leaked} px = ${percent(stats.leaked, stats.labelled)} of its labelled pixels`;
  }
  if (parentLevel === null) {
    $("hover-parent").textContent = "none: the coarsest clustering";
  } else {
    const nested = clusterings[parentLevel].name === "queries" ? " (queries are not nested in the levels)" : "";
    $("hover-parent").textContent = `${clusteringName(parentLevel)}: cluster ${parentId}, ${parentSize} px${nested}`;
  }
}

// A clustering's ids, decoded on first use: opening the page decodes only the first clustering
// and its parent, not every map of a large image.
function decodedMap(index) {
  if (!state.maps[index]) {
    const c = clusterings[index];
    state.maps[index] = decodeIds(c.map, `${c.name} cluster map`).then((ids) => (state.maps[index] = ids));
  }
  return state.maps[index]; // the ids, or the promise of them
}

async function selectLevel(index) {
  slider.value = String(index);
  const wanted = [index, index + 1].filter((i) => i < clusterings.length); // the clustering, its parent
  await Promise.all(wanted.map(decodedMap));
  if (slider.value !== String(index)) return; // moved on meanwhile: the newer call draws
  state.level = index;
  const c = clusterings[index];
  $("level-name").textContent = `${clusteringName(index)} · ${c.num_clusters} clusters`;
  for (const row of document.querySelectorAll("#scores tbody tr")) {
    row.classList.toggle("current", row.dataset.index === String(index));
  }
  drawBoundaries();
  state.hovered = "";
  if (state.pointer !== null) showHover();
  else clearHover();
  // which clustering the boundaries show; drawing waits for decoding, so readers wait for this
  layers.boundaries.dataset.clustering = c.name;
}

// ------------------------------------------------------------------------------ page
function fillScores() {
  const body = document.querySelector("#scores tbody");
  const format = (value) => (value === null || value === undefined ? "–" : value.toFixed(4));
  clusterings.forEach((c, index) => {
    const row = document.createElement("tr");
    row.dataset.index = String(index);
    const cells = [
      c.name,
      c.stride === null ? "–" : String(c.stride),
      String(c.num_clusters),
      format(c.scores && c.scores.UE),
      format(c.scores && c.scores.ASA),
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    row.addEventListener("click", () => selectLevel(index).catch(fail));
    body.appendChild(row);
  });
}

function fillLinks() {
  const links = data.links || {};
  for (const [name, element] of [["index", "link-index"], ["previous", "link-previous"], ["next", "link-next"]]) {
    if (links[name]) $(element).href = links[name];
    else $(element).setAttribute("aria-disabled", "true");
  }
}

function layOut() {
  for (const canvas of Object.values(layers)) {
    canvas.width = W;
    canvas.height = H;
  }
  // as wide as the column allows, but small images only up to a whole multiple of their size,
  // so that their pixels stay square blocks
  const zoom = Math.max(1, Math.floor(DISPLAY_SIDE / Math.max(W, H)));
  stage.style.maxWidth = `${W * zoom}px`;
  const scale = $("level-scale");
  for (const c of clusterings) {
    const mark = document.createElement("span");
    mark.textContent = c.name === "queries" ? "Q" : c.stride === null ? c.name.replace("level", "L") : String(c.stride);
    scale.appendChild(mark);
  }
}

function pixelUnder(event) {
  const box = stage.getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) * W) / box.width);
  const y = Math.floor(((event.clientY - box.top) * H) / box.height);
  return { x: Math.min(W - 1, Math.max(0, x)), y: Math.min(H - 1, Math.max(0, y)) };
}

async function main() {
  document.title = `${data.image_id} · hierarchy explorer`;
  fillLinks();
  layOut();
  fillScores();
  slider.max = String(clusterings.length - 1);
  for (const kind of Object.keys(data.predictions)) $("picture").add(new Option(`prediction: ${kind}`, kind));
  if (!data.ground_truth) $("show-ground-truth").disabled = true;

  if (data.ground_truth) {
    state.groundTruth = await decodeIds(data.ground_truth.map, "ground-truth map");
  }

  slider.addEventListener("input", () => selectLevel(Number(slider.value)).catch(fail));
  $("show-boundaries").addEventListener("change", drawBoundaries);
  const redraw = () => drawBase().catch(fail);
  $("picture").addEventListener("change", redraw);
  $("show-ground-truth").addEventListener("change", redraw);
  stage.addEventListener("mousemove", (event) => {
    state.pointer = pixelUnder(event);
    showHover();
  });
  stage.addEventListener("mouseleave", clearHover);

  await drawBase();
  await selectLevel(0);
  $("status").textContent = `${W}×${H} pixels · ${clusterings.length} clusterings · hover to inspect a cluster`;
  document.body.dataset.ready = "true";
}

function fail(error) {
  $("status").textContent = `The page could not be drawn: ${error.message}`;
  $("status").classList.add("error");
  console.error(error);
}

main().catch(fail);
