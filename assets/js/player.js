// Say plainly when the browser cannot play the video, instead of leaving a dead 0:00 player.
(function () {
  const player = document.getElementById("player");
  const message = document.getElementById("player-error");
  if (!player || !message) return;
  function failed() {
    message.hidden = false;
    player.hidden = true;
  }
  player.addEventListener("error", failed);
  const source = player.querySelector("source");
  if (source) source.addEventListener("error", failed);
  if (player.error) failed();
})();
