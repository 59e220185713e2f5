// The explorer's wiring: controls to API calls, answers to the views. Each panel's data-state
// (empty, loading, done, error) and data-runs say where it stands, for assistive technology
// (aria-busy) and for tests.

import * as api from './api.js';
import { drawingPad } from './draw.js';
import { interpolate, traverse } from './latent.js';
import {
  barChart, bitmapCanvas, blobBitmap, channelMaps, download, facts, fixed, montage, pngBitmap, tile,
} from './render.js';

const $ = (id) => document.getElementById(id);

const state = {
  models: [], // GET /v1/models
  model: null, // {name, version}
  card: null,
  image: null, // the Blob being analysed
  mean: null, // its latent mean, once encoded
  endpoints: { a: null, b: null }, // Blobs
  dimChosen: false, // whether the user picked the dimension to traverse
  generation: 0, // analyses started; an answer for an older one is dropped
  anomalyGeneration: 0, // anomaly requests started (by an analysis or the map box); likewise
};

/** A panel's state; data-runs counts its finished requests, so a caller can wait for the next one. */
function setPanel(panel, value) {
  panel.dataset.state = value;
  panel.setAttribute('aria-busy', String(value === 'loading'));
  if (value === 'done' || value === 'error') panel.dataset.runs = String(Number(panel.dataset.runs || 0) + 1);
}

function showError(element, error) {
  element.textContent = error instanceof api.ApiError ? error.message : `unexpected error: ${error.message}`;
  element.hidden = false;
}

function hideError(element) {
  element.hidden = true;
  element.textContent = '';
}

function announce(text) {
  $('status').textContent = text;
}

const fileStem = (kind) => `${state.model.name}-${state.model.version}-${kind}`;

function limit(name, fallback) {
  const limits = (state.card && state.card.limits) || {};
  return Number.isInteger(limits[name]) ? limits[name] : fallback;
}

/** A form number input's value as an integer, clamped to the input's range. */
function intValue(input) {
  const value = Math.trunc(Number(input.value));
  const low = input.min === '' ? -Infinity : Number(input.min);
  const high = input.max === '' ? Infinity : Number(input.max);
  return Math.min(high, Math.max(low, value));
}

// ---- models ----

async function loadModels() {
  const panel = $('model-panel');
  setPanel(panel, 'loading');
  try {
    const { models } = await api.listModels();
    if (!models.length) throw new api.ApiError(503, 'no_model', 'the service serves no model yet');
    const select = $('model-select');
    select.replaceChildren(...models.map((model) => new Option(model.name, model.name, model.default, model.default)));
    state.models = models;
    await selectModel();
  } catch (error) {
    showError($('model-error'), error);
    setPanel(panel, 'error');
  }
}

async function selectModel() {
  const entry = state.models.find((model) => model.name === $('model-select').value);
  $('version-select').replaceChildren(...entry.versions.map((version) => {
    const selected = version === entry.default_version;
    return new Option(version, version, selected, selected);
  }));
  await selectVersion();
}

async function selectVersion() {
  const panel = $('model-panel');
  setPanel(panel, 'loading');
  hideError($('model-error'));
  const model = { name: $('model-select').value, version: $('version-select').value };
  state.model = model;
  let card;
  try {
    card = await api.modelCard(model);
  } catch (error) {
    if (state.model !== model) return; // another choice since
    state.card = null;
    $('model-card').replaceChildren();
    showError($('model-error'), error);
    setPanel(panel, 'error');
    return;
  }
  if (state.model !== model) return;
  state.card = card;
  showCard(card);
  applyLimits(card);
  for (const kind of ['sample', 'interpolate', 'traverse']) clearStrip(kind);
  setPanel(panel, 'done');
  announce(`Model ${state.model.name} ${state.model.version} selected`);
  if (state.image) await analyse(state.image);
}

function showCard(card) {
  const metrics = card.metrics || {};
  const likelihood = card.likelihood || {};
  const nll = metrics.nll_nats;
  const iwae = Number.isInteger(metrics.iwae_k) ? ` (IWAE, k = ${metrics.iwae_k})` : '';
  facts($('model-card'), [
    ['Likelihood', likelihood.name || 'not recorded', likelihood.name, 'card-likelihood'],
    ['Latent size', Number.isInteger(card.latent_dim) ? String(card.latent_dim) : 'not recorded', card.latent_dim,
      'card-latent-dim'],
    ['Prior', priorText(card.prior), (card.prior || {}).name, 'card-prior'],
    ['Test NLL', Number.isFinite(nll) ? `${fixed(nll)} nats${iwae}` : 'not recorded', nll, 'card-nll'],
    ['Test bits/dim', fixed(metrics.bits_per_dim, 4), metrics.bits_per_dim, 'card-bpd'],
    ['Input', Array.isArray((card.input || {}).shape) ? card.input.shape.join(' x ') : 'not recorded'],
    ['Anomaly score', card.anomaly ? card.anomaly.method : 'no calibration'],
  ]);
  $('latent-prior').textContent = priorHint(card.prior);
}

// p(z): N(0, I), or a learned mixture with its number of components.
function priorText(prior) {
  if (!prior || !prior.name) return 'not recorded';
  if (prior.name === 'standard_normal') return 'N(0, I)';
  return Number.isInteger(prior.components) ? `${prior.name}, ${prior.components} components` : prior.name;
}

// The latent chart's caption: what a bar is measured against, the model's own p(z).
function priorHint(prior) {
  if (!prior || !prior.name) return 'the model card does not record its prior';
  if (prior.name === 'standard_normal') return 'the prior is N(0, I), each dimension N(0, 1)';
  const what = prior.name === 'vamp' ? 'a VampPrior' : 'a mixture of Gaussians';
  const size = Number.isInteger(prior.components) ? ` with ${prior.components} components` : '';
  return `the prior is ${what}${size} (${prior.name}), so a dimension's usual range depends on the component`;
}

function applyLimits(card) {
  const maxBatch = limit('max_batch', 16);
  for (const id of ['sample-n', 'interpolate-steps', 'traverse-steps']) $(id).max = String(maxBatch);
  $('sample-n').value = String(Math.min(intValue($('sample-n')), maxBatch));
  $('iwae-k').max = String(limit('max_k', 1000));
  $('iwae-k').value = String(Math.min(intValue($('iwae-k')), limit('max_k', 1000)));
  $('traverse-dim').max = String(card.latent_dim - 1);
  $('traverse-dim').value = String(Math.min(intValue($('traverse-dim')), card.latent_dim - 1));
}

// ---- one image: preprocessing, reconstruction, latents, scores ----

async function analyse(blob) {
  if (!state.card) return;
  state.image = blob;
  state.mean = null;
  const generation = ++state.generation;
  const panel = $('analysis-panel');
  setPanel(panel, 'loading');
  $('analysis-hint').hidden = true;
  for (const id of ['analysis-error', 'elbo-error', 'anomaly-error']) hideError($(id));
  updateButtons();
  announce('Analysing the image');
  const model = state.model;
  const k = intValue($('iwae-k'));
  const anomalyGeneration = ++state.anomalyGeneration;
  setPanel($('anomaly-panel'), 'loading');
  const calls = await Promise.allSettled([
    api.postImage(model, 'preprocess', blob, { format: 'json' }),
    api.postImage(model, 'reconstruct', blob, { format: 'json' }),
    api.postImage(model, 'encode', blob),
    scored() ? api.postImage(model, 'elbo', blob, { k, seed: 0 }) : unscored(model),
    anomalyRequest(model, blob),
  ]);
  if (generation !== state.generation) return;
  const [input, recon, encoded, elbo, anomaly] = calls;
  const failed = [input, recon, encoded].find((call) => call.status === 'rejected');
  if (failed) {
    for (const id of ['input-view', 'recon-view']) $(id).replaceChildren();
    for (const id of ['elbo-scores', 'anomaly-scores']) $(id).replaceChildren();
    $('elbo-data-space').textContent = '';
    $('latent-chart').replaceChildren();
    showLower(null);
    clearMap();
    showError($('analysis-error'), failed.reason);
    if (anomalyGeneration === state.anomalyGeneration) setPanel($('anomaly-panel'), 'error');
    setPanel(panel, 'error');
    announce('The image could not be analysed');
    return;
  }
  const [inputBitmap, reconBitmap] = await Promise.all([
    pngBitmap(input.value.images[0].png_base64), pngBitmap(recon.value.images[0].png_base64)]);
  if (generation !== state.generation) return;
  const inputCanvas = bitmapCanvas(inputBitmap, 'the input after preprocessing');
  inputCanvas.id = 'input-canvas';
  const reconCanvas = bitmapCanvas(reconBitmap, 'the reconstruction');
  reconCanvas.id = 'recon-canvas';
  $('input-view').replaceChildren(tile(inputCanvas, 'Input after preprocessing', `${fileStem('input')}.png`));
  $('recon-view').replaceChildren(tile(reconCanvas, 'Reconstruction', `${fileStem('reconstruction')}.png`));
  state.mean = encoded.value.results[0].mean;
  if (!state.dimChosen) $('traverse-dim').value = String(mostPrecise(encoded.value.results[0].logvar));
  drawChart();
  showLower(encoded.value.results[0].lower);
  const shape = state.card.latent_shape || [];
  if (shape.length === 3) channelMaps($('latent-maps'), state.mean, shape);
  else $('latent-maps').replaceChildren();
  if (elbo.status === 'fulfilled') showElbo(elbo.value);
  else {
    $('elbo-scores').replaceChildren();
    $('elbo-data-space').textContent = '';
    showError($('elbo-error'), elbo.reason);
  }
  // The map box changed while this analysis ran: its own request's answer is the one to show.
  if (anomalyGeneration === state.anomalyGeneration) showAnomalyCall(anomaly);
  panel.dataset.model = `${model.name} ${model.version}`; // which model these results are from
  setPanel(panel, 'done');
  updateButtons();
  announce(`Reconstruction and scores from ${model.name} ${model.version}`);
}

function showElbo(answer) {
  const result = answer.results[0];
  facts($('elbo-scores'), [
    ['ELBO', `${fixed(result.elbo)} nats`, result.elbo, 'score-elbo'],
    ['Reconstruction term', `${fixed(result.reconstruction)} nats`, result.reconstruction, 'score-reconstruction'],
    ['KL term', `${fixed(result.kl)} nats`, result.kl, 'score-kl'],
    [`IWAE log p(x), k = ${answer.k}`, Number.isFinite(result.log_likelihood) ? `${fixed(result.log_likelihood)} nats`
      : 'needs k > 1', result.log_likelihood, 'score-iwae'],
    Number.isFinite(result.log_likelihood_bits_per_dim)
      ? ['Bits per dimension (IWAE)', fixed(result.log_likelihood_bits_per_dim, 4), result.log_likelihood_bits_per_dim,
        'score-bpd']
      : ['Bits per dimension (ELBO)', fixed(result.bits_per_dim, 4), result.bits_per_dim, 'score-bpd'],
  ]);
  $('elbo-data-space').textContent = `Scored on ${answer.data_space}`;
}

// ---- the anomaly score and its map ----

/** A model without a likelihood (a deterministic decoder, as a latent-diffusion autoencoder's) cannot score
 * an image: the card says so, so the page does not ask (the API would answer 409 no_likelihood). */
const scored = () => (state.card.likelihood || {}).name !== 'none';

const unscored = (model) => Promise.reject(new Error(
  `${model.name} ${model.version} has no likelihood (a deterministic decoder), so it does not score images`));

/** POST /anomaly, with map=true while "show where" is checked. A model calibrated before anomaly maps
 * existed answers that with 409 no_anomaly_map: the page then asks without the map, so the score is still
 * shown, and keeps the API's message to say why there is no map. */
async function anomalyRequest(model, blob) {
  if (!scored()) return unscored(model);
  if (!$('anomaly-map-toggle').checked) return { answer: await api.postImage(model, 'anomaly', blob) };
  try {
    return { answer: await api.postImage(model, 'anomaly', blob, { map: true }) };
  } catch (error) {
    if (!(error instanceof api.ApiError) || error.code !== 'no_anomaly_map') throw error;
    return { answer: await api.postImage(model, 'anomaly', blob), noMap: error };
  }
}

/** An anomaly request's settled promise, shown: the scores and the map, or the API's message. */
function showAnomalyCall(call) {
  hideError($('anomaly-error'));
  if (call.status === 'fulfilled') {
    showAnomaly(call.value.answer);
    showMap(call.value.answer, call.value.noMap);
    setPanel($('anomaly-panel'), 'done');
  } else {
    $('anomaly-scores').replaceChildren();
    clearMap();
    showError($('anomaly-error'), call.reason);
    setPanel($('anomaly-panel'), 'error');
  }
}

/** The map box changed: the current image's anomaly request again, the rest of the analysis kept. */
async function rescoreAnomaly() {
  const { image, model } = state;
  if (!image || !state.card || $('analysis-panel').dataset.state === 'error') return; // the next analysis asks
  const generation = state.generation;
  const anomalyGeneration = ++state.anomalyGeneration;
  setPanel($('anomaly-panel'), 'loading');
  const [call] = await Promise.allSettled([anomalyRequest(model, image)]);
  if (anomalyGeneration !== state.anomalyGeneration || generation !== state.generation) return;
  if ($('analysis-panel').dataset.state === 'error') { // the analysis this was for failed meanwhile
    setPanel($('anomaly-panel'), 'error');
    return;
  }
  showAnomalyCall(call);
  announce($('anomaly-map-toggle').checked ? 'Anomaly score and map' : 'Anomaly score without the map');
}

function clearMap() {
  $('anomaly-map-view').replaceChildren();
  $('anomaly-map-figure').hidden = true;
  for (const id of ['anomaly-map-caption', 'anomaly-map-method']) $(id).textContent = '';
  for (const key of ['value', 'x', 'y']) delete $('anomaly-map-caption').dataset[key];
  for (const id of ['anomaly-map-note', 'anomaly-fpr-note']) {
    $(id).hidden = true;
    $(id).textContent = '';
  }
}

/** The highest percentile of an H x W map and where it is first reached (in reading order). */
function highest(map) {
  let best = { value: -Infinity, x: 0, y: 0 };
  map.forEach((row, y) => row.forEach((value, x) => {
    if (value > best.value) best = { value, x, y };
  }));
  return best;
}

/** The heatmap over the image (the API's map_png, at the model's input size, scaled up crisply by CSS to
 * the thumbnails' size), captioned with its highest percentile; the fpr_note when the answer has one. */
function showMap(answer, noMap) {
  clearMap();
  if (answer.fpr_note) {
    $('anomaly-fpr-note').textContent = `Note: ${answer.fpr_note.replace(/\.?$/, '.')}`;
    $('anomaly-fpr-note').hidden = false;
  }
  if (noMap) {
    $('anomaly-map-note').textContent = `No anomaly map: ${noMap.message}`;
    $('anomaly-map-note').hidden = false;
  }
  const result = answer.results[0];
  if (!result.map_png || !Array.isArray(result.map)) return;
  const top = highest(result.map);
  const where = `highest pixel percentile ${top.value.toFixed(4)}, at x ${top.x}, y ${top.y}`;
  const image = document.createElement('img');
  image.id = 'anomaly-map-image';
  image.className = 'anomaly-map';
  image.src = `data:image/png;base64,${result.map_png}`;
  image.alt = `Anomaly map over the input (the more anomalous a pixel, the stronger its tint); ${where}`;
  image.title = `Anomaly map: ${where}`;
  $('anomaly-map-view').replaceChildren(image);
  const caption = $('anomaly-map-caption');
  caption.textContent = `Anomaly map over the input: ${where}`;
  caption.dataset.value = String(top.value);
  caption.dataset.x = String(top.x);
  caption.dataset.y = String(top.y);
  const how = answer.map || {};
  $('anomaly-map-method').textContent = how.method
    ? `Map: ${how.method}; ${how.samples} draws of z, smoothed over ${how.smoothing_pixels} px, seed ${how.seed}.`
    : '';
  $('anomaly-map-figure').hidden = false;
}

function showAnomaly(answer) {
  const result = answer.results[0];
  const verdict = result.is_anomaly ? 'anomalous' : 'typical';
  facts($('anomaly-scores'), [
    ['Score', fixed(result.score), result.score, 'anomaly-score'],
    ['Percentile', `${fixed(100 * result.percentile, 1)}%`, result.percentile, 'anomaly-percentile'],
    ['Verdict', `${verdict} at a ${fixed(100 * answer.fpr, 1)}% false-positive rate`, verdict, 'anomaly-verdict'],
    ['Threshold', fixed(answer.threshold), answer.threshold],
    ['Method', answer.method],
  ]);
  $('anomaly-verdict').className = result.is_anomaly ? 'verdict anomalous' : 'verdict typical';
}

/** The dimension the encoder is surest of for this image (lowest posterior variance): until the user
 * picks one, the traversal starts there, as a dimension the posterior leaves at the prior shows nothing. */
function mostPrecise(logvar) {
  return logvar.reduce((best, value, i) => (value < logvar[best] ? i : best), 0);
}

function drawChart() {
  barChart($('latent-chart'), state.mean, (dim) => {
    $('traverse-dim').value = String(dim);
    state.dimChosen = true;
    drawChart();
    $('traverse-dim').focus();
  }, intValue($('traverse-dim')));
}

/** A two-level model's q(z1 | x, z2) means (the /encode result's `lower`), or nothing for one level. */
function showLower(lower) {
  $('lower-level').hidden = !lower;
  if (lower) barChart($('lower-chart'), lower.mean, null, -1);
  else $('lower-chart').replaceChildren();
}

// ---- grids and strips of decoded latents ----

/** Where a panel's decoded images go: the sample grid, or the interpolation's or traversal's strip. */
const tilesOf = (kind) => $(kind === 'sample' ? 'sample-grid' : `${kind}-strip`);

function clearStrip(kind) {
  tilesOf(kind).replaceChildren();
  $(`${kind}-download`).hidden = true;
  hideError($(`${kind}-error`));
  setPanel($(`${kind}-panel`), 'empty');
}

/** Shows decoded PNGs as tiles, and arms the panel's download button with their montage. */
async function showTiles(kind, images, labels, columns) {
  const container = tilesOf(kind);
  const bitmaps = await Promise.all(images.map((image) => pngBitmap(image.png_base64)));
  const canvases = bitmaps.map((bitmap, i) => bitmapCanvas(bitmap, labels[i]));
  container.replaceChildren(...canvases.map((canvas, i) => tile(canvas, labels[i], `${fileStem(kind)}-${i}.png`)));
  const button = $(`${kind}-download`);
  button.hidden = false;
  button.onclick = () => download(montage(canvases, columns), `${fileStem(kind)}.png`);
}

/** Runs one panel's request: loading state, the API's message on failure. */
async function runPanel(kind, work) {
  const panel = $(`${kind}-panel`);
  setPanel(panel, 'loading');
  hideError($(`${kind}-error`));
  try {
    await work();
    setPanel(panel, 'done');
  } catch (error) {
    tilesOf(kind).replaceChildren();
    $(`${kind}-download`).hidden = true;
    showError($(`${kind}-error`), error);
    setPanel(panel, 'error');
  }
}

function sample() {
  const seed = intValue($('sample-seed'));
  const temperature = Number($('sample-temperature').value);
  const n = intValue($('sample-n'));
  return runPanel('sample', async () => {
    const answer = await api.sample(state.model, { n, seed, temperature });
    const labels = answer.samples.map((s) => `Sample ${s.index + 1}, seed ${answer.seed}, temperature ${temperature}`);
    await showTiles('sample', answer.samples, labels, Math.ceil(Math.sqrt(answer.samples.length)));
    $('sample-grid').dataset.seed = String(answer.seed);
    announce(`${answer.samples.length} samples, seed ${answer.seed}`);
  });
}

async function setEndpoint(which) {
  if (!state.image || !state.mean) return;
  state.endpoints[which] = state.image;
  const bitmap = await blobBitmap(await canvasBlob($('input-canvas')));
  $(`endpoint-${which}`).replaceChildren(bitmapCanvas(bitmap, `endpoint ${which.toUpperCase()}`));
  updateButtons();
}

const canvasBlob = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));

function interpolation() {
  const steps = intValue($('interpolate-steps'));
  const path = $('interpolate-path').value;
  return runPanel('interpolate', async () => {
    const [a, b] = await Promise.all(['a', 'b'].map((which) => api.postImage(state.model, 'encode', state.endpoints[which])));
    const rows = interpolate(a.results[0].mean, b.results[0].mean, steps, path);
    const answer = await api.decode(state.model, rows);
    const labels = rows.map((_, i) => `Step ${i + 1} of ${steps} from A to B (${path})`);
    await showTiles('interpolate', answer.images, labels, steps);
    announce(`Interpolated in ${steps} steps`);
  });
}

function traversal() {
  const dim = intValue($('traverse-dim'));
  const radius = Number($('traverse-radius').value);
  const steps = intValue($('traverse-steps'));
  const mean = state.mean;
  return runPanel('traverse', async () => {
    const rows = traverse(mean, dim, radius, steps);
    const answer = await api.decode(state.model, rows);
    const labels = rows.map((z) => `Dimension ${dim} at ${z[dim].toFixed(2)}`);
    await showTiles('traverse', answer.images, labels, steps);
    if (state.mean) drawChart(); // none while another image is being analysed
    announce(`Traversed dimension ${dim}`);
  });
}

function updateButtons() {
  const analysed = Boolean(state.mean);
  $('set-a').disabled = !analysed;
  $('set-b').disabled = !analysed;
  $('traverse-button').disabled = !analysed;
  $('interpolate-button').disabled = !(state.endpoints.a && state.endpoints.b);
}

// ---- controls ----

function onSubmit(formId, action) {
  $(formId).addEventListener('submit', (event) => {
    event.preventDefault();
    if (event.target.reportValidity()) action();
  });
}

function wire() {
  $('model-select').addEventListener('change', selectModel);
  $('version-select').addEventListener('change', selectVersion);
  $('file-input').addEventListener('change', (event) => {
    const [file] = event.target.files;
    if (file) analyse(file);
  });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const [file] = event.dataTransfer.files;
    if (file) analyse(file);
  });
  const pad = drawingPad($('draw-pad'), $('brush-size'));
  $('draw-clear').addEventListener('click', pad.clear);
  $('draw-use').addEventListener('click', async () => analyse(await pad.blob()));
  $('sample-temperature').addEventListener('input', (event) => {
    $('sample-temperature-value').textContent = Number(event.target.value).toFixed(2);
  });
  $('sample-new-seed').addEventListener('click', () => {
    $('sample-seed').value = String(Math.floor(Math.random() * 2 ** 31));
    sample();
  });
  onSubmit('sample-form', sample);
  $('set-a').addEventListener('click', () => setEndpoint('a'));
  $('set-b').addEventListener('click', () => setEndpoint('b'));
  onSubmit('interpolate-form', interpolation);
  onSubmit('traverse-form', traversal);
  $('anomaly-map-toggle').addEventListener('change', rescoreAnomaly);
  $('traverse-dim').addEventListener('change', () => {
    state.dimChosen = true;
    if (state.mean) drawChart();
  });
  updateButtons();
}

wire();
loadModels();
