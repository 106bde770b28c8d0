// Drawing a rectangle over an image; the box is reported in the image's own pixels.
"use strict";
function attachRegion(canvas, naturalSize, onBox) {
  let start = null, box = null;
  const ctx = canvas.getContext("2d");
  const scale = () => naturalSize().w / canvas.getBoundingClientRect().width;
  const point = (ev) => {
    const r = canvas.getBoundingClientRect();
    const src = ev.touches ? ev.touches[0] : ev;
    return { x: Math.max(0, Math.min(r.width, src.clientX - r.left)), y: Math.max(0, Math.min(r.height, src.clientY - r.top)) };
  };
  const draw = () => {
    const r = canvas.getBoundingClientRect();
    canvas.width = r.width; canvas.height = r.height;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!box) return;
    ctx.fillStyle = "rgba(0,0,0,0.35)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.clearRect(box.x, box.y, box.w, box.h);
    ctx.strokeStyle = "#ffd400"; ctx.lineWidth = 2;
    ctx.strokeRect(box.x, box.y, box.w, box.h);
  };
  const down = (ev) => { start = point(ev); box = null; ev.preventDefault(); };
  const move = (ev) => {
    if (!start) return;
    const p = point(ev);
    box = { x: Math.min(start.x, p.x), y: Math.min(start.y, p.y), w: Math.abs(p.x - start.x), h: Math.abs(p.y - start.y) };
    draw(); ev.preventDefault();
  };
  const up = () => {
    if (!start) return;
    start = null;
    if (!box || box.w < 4 || box.h < 4) { box = null; draw(); onBox(null); return; }
    const s = scale(), n = naturalSize();
    const x = Math.round(box.x * s), y = Math.round(box.y * s);
    onBox({ x, y, w: Math.min(n.w - x, Math.round(box.w * s)), h: Math.min(n.h - y, Math.round(box.h * s)) });
  };
  canvas.addEventListener("mousedown", down); canvas.addEventListener("touchstart", down, { passive: false });
  window.addEventListener("mousemove", move); canvas.addEventListener("touchmove", move, { passive: false });
  window.addEventListener("mouseup", up); canvas.addEventListener("touchend", up);
  return {
    clear() { box = null; draw(); }, redraw: draw,
    show(b) { const s = scale(); box = { x: b.x / s, y: b.y / s, w: b.w / s, h: b.h / s }; draw(); },  // image pixels
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const img = document.getElementById("frame");
  const canvas = document.getElementById("region-canvas");
  if (!img || !canvas) return;
  const boxInput = document.getElementById("region-box");
  const button = document.getElementById("region-search");
  const objectsButton = document.getElementById("region-objects");
    // boxes are in the item's source pixels (data-width/height: the video frame at full size), like saved boxes
  const setup = () => attachRegion(canvas, () => ({ w: +img.dataset.width || img.naturalWidth, h: +img.dataset.height || img.naturalHeight }), (b) => {
    boxInput.value = b ? `${b.x},${b.y},${b.w},${b.h}` : "";
    button.disabled = !b;
    if (objectsButton) objectsButton.disabled = !b;
  });
  if (img.complete) setup(); else img.addEventListener("load", setup);
});
