// Showing images and numbers: PNGs from the API drawn at their own size on canvases (scaled up
// crisply by CSS), downloads, and the latent bar chart. No inline styles: the page's CSP forbids them.

const SVG = 'http://www.w3.org/2000/svg';

/** A base64 PNG as an ImageBitmap, its grey levels untouched by colour management. */
export function pngBitmap(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return blobBitmap(new Blob([bytes], { type: 'image/png' }));
}

export function blobBitmap(blob) {
  return createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
}

/** A canvas holding the bitmap at its own size. */
export function bitmapCanvas(bitmap, label) {
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', label);
  return canvas;
}

export function download(canvas, filename) {
  canvas.toBlob((blob) => {
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 0); // after the click has taken the URL
  }, 'image/png');
}

/** A button showing the image; pressing it downloads the image as PNG. */
export function tile(canvas, label, filename) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'tile';
  button.title = `${label}: download as PNG`;
  button.setAttribute('aria-label', `${label}: download as PNG`);
  button.append(canvas);
  button.addEventListener('click', () => download(canvas, filename));
  return button;
}

/** The canvases side by side in rows of `columns`, 2 px apart: one PNG for a grid or a strip. */
export function montage(canvases, columns) {
  const gap = 2;
  const { width, height } = canvases[0];
  const rows = Math.ceil(canvases.length / columns);
  const out = document.createElement('canvas');
  out.width = columns * width + (columns + 1) * gap;
  out.height = rows * height + (rows + 1) * gap;
  const context = out.getContext('2d');
  context.fillStyle = '#000';
  context.fillRect(0, 0, out.width, out.height);
  canvases.forEach((canvas, i) => {
    const x = gap + (i % columns) * (width + gap);
    const y = gap + Math.floor(i / columns) * (height + gap);
    context.drawImage(canvas, x, y);
  });
  return out;
}

/** Numbers as a definition list: rows of [term, text, value (kept in data-value), id]. */
export function facts(list, rows) {
  list.replaceChildren();
  for (const [term, text, value, id] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    dd.textContent = text;
    if (id) dd.id = id;
    if (value !== undefined && value !== null) dd.dataset.value = String(value);
    list.append(dt, dd);
  }
}

export const fixed = (value, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : 'not recorded');

/**
 * The latent means as bars around a zero line, scaled to the largest |mean| (at least 3, the
 * prior's usual range). Each bar is focusable and selecting it calls onSelect(dim).
 */
export function barChart(svg, means, onSelect, selected) {
  const width = 640;
  const height = 180;
  const top = 10;
  const bottom = 24;
  const mid = top + (height - top - bottom) / 2;
  const half = (height - top - bottom) / 2;
  const scale = Math.max(3, ...means.map(Math.abs));
  const slot = width / means.length;
  svg.replaceChildren();
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const axis = document.createElementNS(SVG, 'line');
  Object.entries({ x1: 0, x2: width, y1: mid, y2: mid, class: 'axis' }).forEach(([k, v]) => axis.setAttribute(k, v));
  svg.append(axis);
  means.forEach((mean, dim) => {
    const bar = document.createElementNS(SVG, 'rect');
    const size = (Math.abs(mean) / scale) * half;
    bar.setAttribute('x', String(dim * slot + slot * 0.15));
    bar.setAttribute('width', String(slot * 0.7));
    bar.setAttribute('y', String(mean >= 0 ? mid - size : mid));
    bar.setAttribute('height', String(Math.max(size, 0.5)));
    bar.setAttribute('class', dim === selected ? 'bar selected' : 'bar');
    bar.setAttribute('aria-label', `dimension ${dim}: mean ${mean.toFixed(3)}`);
    bar.dataset.dim = String(dim);
    bar.dataset.value = String(mean);
    const title = document.createElementNS(SVG, 'title');
    title.textContent = `dimension ${dim}: ${mean.toFixed(3)}`;
    bar.append(title);
    if (onSelect) { // a bar to pick (the traversal's dimension); without onSelect, a chart to read
      bar.setAttribute('tabindex', '0');
      bar.setAttribute('role', 'button');
      bar.addEventListener('click', () => onSelect(dim));
      bar.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          onSelect(dim);
        }
      });
    }
    svg.append(bar);
    const every = Math.max(1, Math.ceil(means.length / 16));
    if (dim % every === 0) {
      const label = document.createElementNS(SVG, 'text');
      label.setAttribute('x', String(dim * slot + slot / 2));
      label.setAttribute('y', String(height - 6));
      label.setAttribute('class', 'tick');
      label.textContent = String(dim);
      svg.append(label);
    }
  });
}

/** A spatial latent [C, h, w] (flattened in C order, as the API returns it) as one small grey image per
 * channel, each scaled by its own largest |value|: mid-grey is 0, white the largest positive value. */
export function channelMaps(container, values, shape) {
  const [channels, height, width] = shape;
  const tiles = [];
  for (let c = 0; c < channels; c += 1) {
    const plane = values.slice(c * height * width, (c + 1) * height * width);
    const extent = Math.max(1e-12, ...plane.map(Math.abs));
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext('2d');
    const image = context.createImageData(width, height);
    plane.forEach((value, i) => {
      const level = Math.round(127.5 + 127.5 * (value / extent));
      image.data.set([level, level, level, 255], 4 * i);
    });
    context.putImageData(image, 0, 0);
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', `latent channel ${c + 1} of ${channels}, largest |value| ${extent.toFixed(3)}`);
    canvas.className = 'latent-map';
    const figure = document.createElement('figure');
    const caption = document.createElement('figcaption');
    caption.textContent = `channel ${c + 1}: ±${extent.toFixed(2)}`;
    figure.append(canvas, caption);
    tiles.push(figure);
  }
  container.replaceChildren(...tiles);
}
