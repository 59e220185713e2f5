// A drawing pad: white strokes on black, as Fashion-MNIST's images are. Pointer events cover the
// mouse, a pen and touch; the pad is sent to the API as a PNG, which preprocesses it like any upload.

export function drawingPad(canvas, brushInput) {
  const context = canvas.getContext('2d');
  let last = null;
  let drawn = false;

  function clear() {
    context.fillStyle = '#000';
    context.fillRect(0, 0, canvas.width, canvas.height);
    drawn = false;
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width),
      (event.clientY - box.top) * (canvas.height / box.height)];
  }

  function stroke(to) {
    context.strokeStyle = '#fff';
    context.lineCap = 'round';
    context.lineJoin = 'round';
    context.lineWidth = Number(brushInput.value);
    context.beginPath();
    context.moveTo(...(last || to));
    context.lineTo(...to);
    context.stroke();
    last = to;
    drawn = true;
  }

  canvas.addEventListener('pointerdown', (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = null;
    stroke(point(event));
  });
  canvas.addEventListener('pointermove', (event) => {
    if (last) stroke(point(event));
  });
  for (const type of ['pointerup', 'pointercancel']) {
    canvas.addEventListener(type, () => { last = null; });
  }
  clear();

  return {
    clear,
    isEmpty: () => !drawn,
    blob: () => new Promise((resolve) => canvas.toBlob(resolve, 'image/png')),
  };
}
