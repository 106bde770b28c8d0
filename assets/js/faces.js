// Face boxes over pictures: each [data-box-pct] element ("x,y,w,h" in percent of its picture) is placed over it,
// whatever size the picture is shown at (the CSP allows no inline styles, so they are set here).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-box-pct]").forEach((el) => {
    const [x, y, w, h] = el.dataset.boxPct.split(",").map(Number);
    Object.assign(el.style, { left: `${x}%`, top: `${y}%`, width: `${w}%`, height: `${h}%` });
  });
  document.querySelectorAll(".face-box input[type=checkbox]").forEach((box) => {
    box.addEventListener("change", () => box.closest(".face-box").classList.toggle("chosen", box.checked));
  });
});
