// Polls a running evaluation and reloads the page when it is done (or failed).
(function () {
  const box = document.getElementById("progress");
  if (!box) return;
  const bar = document.getElementById("progress-bar");
  const text = document.getElementById("progress-text");
  async function poll() {
    try {
      const r = await fetch(box.dataset.url, { headers: { Accept: "application/json" } });
      const p = await r.json();
      if (p.total) { bar.max = p.total; bar.value = p.done; }
      text.textContent = `${p.done} of ${p.total} queries`;
      if (p.status !== "running") { window.location.reload(); return; }
    } catch (e) { text.textContent = "waiting for the server…"; }
    setTimeout(poll, 500);
  }
  poll();
})();
