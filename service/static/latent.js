// Paths through latent space: pure functions on plain arrays of numbers.

/** n evenly spaced numbers from start to stop, both included (n >= 2). */
export function linspace(start, stop, n) {
  return Array.from({ length: n }, (_, i) => start + ((stop - start) * i) / (n - 1));
}

export function lerp(a, b, t) {
  return a.map((value, i) => value + t * (b[i] - value));
}

const norm = (v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));

/**
 * Spherical interpolation (Shoemake 1985; for generative models' latents, White 2016, "Sampling
 * generative networks"): weights sin((1-t)w)/sin(w) and sin(tw)/sin(w), w the angle between a
 * and b. Between two typical prior draws it stays near the shell where the prior's mass is, where
 * the straight line cuts through the middle. The straight line where the angle is 0 or pi (no one circle).
 */
export function slerp(a, b, t) {
  const normA = norm(a);
  const normB = norm(b);
  if (normA === 0 || normB === 0) return lerp(a, b, t);
  const cos = a.reduce((sum, x, i) => sum + x * b[i], 0) / (normA * normB);
  const omega = Math.acos(Math.min(1, Math.max(-1, cos)));
  const sin = Math.sin(omega);
  if (sin < 1e-6) return lerp(a, b, t);
  const wa = Math.sin((1 - t) * omega) / sin;
  const wb = Math.sin(t * omega) / sin;
  return a.map((x, i) => wa * x + wb * b[i]);
}

/** `steps` latents from a to b, both included, along the straight line or the spherical path. */
export function interpolate(a, b, steps, path) {
  const step = path === 'spherical' ? slerp : lerp;
  return linspace(0, 1, steps).map((t) => step(a, b, t));
}

/** `steps` copies of `mean` whose dimension `dim` runs over mean[dim] +- radius. */
export function traverse(mean, dim, radius, steps) {
  return linspace(-radius, radius, steps).map((offset) => {
    const z = mean.slice();
    z[dim] += offset;
    return z;
  });
}
