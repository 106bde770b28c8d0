// The keyframe page's words: the OCR boxes can be hidden, and a transcript line seeks the video to its second.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("ocr-toggle");
  if (toggle) {
    toggle.addEventListener("change", () => {
      document.querySelectorAll(".frame-wrap .ocr-box").forEach((box) => { box.hidden = !toggle.checked; });
    });
  }
  const player = document.getElementById("player");
  document.querySelectorAll("#transcript button.seek").forEach((button) => {
    button.addEventListener("click", () => {
      if (!player) return;
      player.currentTime = Number(button.dataset.seek);
      document.querySelectorAll("#transcript li.now").forEach((li) => li.classList.remove("now"));
      button.closest("li").classList.add("now");
      player.play().catch(() => {});  // autoplay rules may refuse; the position is set either way
    });
  });
});
