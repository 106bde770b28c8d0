// Search page: image from file, paste or webcam; region drawing; live similarity slider; export; paging.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("image"), preview = $("image-preview"), canvas = $("preview-canvas");
  const boxInput = $("box"), weight = $("weight-label");
  let bitmap = null, region = null;

  const drawPreview = () => {
    if (!bitmap) return;
    const maxW = Math.min(640, preview.clientWidth || 640);
    const s = Math.min(1, maxW / bitmap.width);
    canvas.style.width = `${bitmap.width * s}px`; canvas.style.height = `${bitmap.height * s}px`;
    canvas.style.backgroundImage = `url(${bitmap.url})`;
    canvas.style.backgroundSize = "100% 100%";
    if (region) region.redraw();
  };
  const keptId = $("image_id");
  const showUrl = (url, box) => {
    const img = new Image();
    img.onload = () => {
      bitmap = { width: img.naturalWidth, height: img.naturalHeight, url };
      preview.hidden = false; weight.hidden = false; boxInput.value = box || "";
      drawPreview();
      if (!region) region = attachRegion(canvas, () => ({ w: bitmap.width, h: bitmap.height }),
        (b) => { boxInput.value = b ? `${b.x},${b.y},${b.w},${b.h}` : ""; });
      else region.clear();
      if (box) { const [x, y, w, h] = box.split(",").map(Number); region.show({ x, y, w, h }); }
    };
    img.onerror = () => { preview.hidden = false; canvas.style.backgroundImage = "none"; };
    img.src = url;
  };
  const showFile = (file) => { if (keptId) keptId.value = ""; showUrl(URL.createObjectURL(file), ""); };
  // the query image of this page's URL (kept on the server): shown with its region, to adjust and run again
  if (preview && preview.dataset.imageUrl) showUrl(preview.dataset.imageUrl, preview.dataset.box);
  const setFile = (file) => {
    const dt = new DataTransfer(); dt.items.add(file); fileInput.files = dt.files; showFile(file);
  };
  if (fileInput) {
    fileInput.addEventListener("change", () => fileInput.files[0] && showFile(fileInput.files[0]));
    document.addEventListener("paste", (ev) => {
      const item = [...(ev.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
      if (item) { setFile(item.getAsFile()); ev.preventDefault(); }
    });
    $("clear-image").addEventListener("click", () => {
      fileInput.value = ""; boxInput.value = ""; bitmap = null; preview.hidden = true; weight.hidden = true;
      if (keptId) keptId.value = "";
    });
    const video = $("webcam"), snap = $("snap-button");
    $("webcam-button").addEventListener("click", async () => {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) { alert("No webcam access in this browser."); return; }
      try {
        video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
        preview.hidden = false; video.hidden = false; snap.hidden = false;
      } catch (err) { alert(`Webcam unavailable: ${err.message}`); }
    });
    snap.addEventListener("click", () => {
      const c = document.createElement("canvas");
      c.width = video.videoWidth; c.height = video.videoHeight;
      c.getContext("2d").drawImage(video, 0, 0);
      video.srcObject.getTracks().forEach((t) => t.stop());
      video.hidden = true; snap.hidden = true;
      c.toBlob((blob) => setFile(new File([blob], "webcam.jpg", { type: "image/jpeg" })), "image/jpeg", 0.92);
    });
  }

  // Minimum similarity: filters the shown results at once; also sent with the next search.
  const slider = $("min_score"), out = $("min_score_value"), mode = $("score_mode");
  const cards = [...document.querySelectorAll("#results .card")];
  const pageSize = Number(($("results") || {}).dataset?.pageSize || 50);
  let shown = pageSize;
  const apply = () => {
    const pct = Number(slider.value);
    out.textContent = `${pct}%`;
    if (!cards.length) return;
    const best = Math.max(...cards.map((c) => Number(c.dataset.score)));
    const floor = pct === 0 ? -Infinity : (pct / 100) * (mode.value === "rel" ? best : 1);
    let visible = 0, passing = 0;
    cards.forEach((c) => {
      const ok = c.dataset.words === "1" || Number(c.dataset.score) >= floor;  // words matched: never hidden
      if (ok) passing += 1;
      const show = ok && passing <= shown;
      c.hidden = !show; if (show) visible += 1;
    });
    const none = $("no-result");  // only when the slider itself hides every result
    none.hidden = passing > 0 || !cards.length; none.querySelector("span").textContent = pct;
    const count = $("result-count");  // the count follows the slider
    if (count) count.textContent = `${passing} result${passing === 1 ? "" : "s"}` +
      (passing < cards.length ? ` of ${cards.length}` : "");
    document.querySelectorAll("#results .group").forEach((g) => {
      const n = [...g.querySelectorAll(".card")].filter((c) => !c.hidden).length;
      g.hidden = n === 0;
      g.querySelector(".group-count").textContent = `${n} result${n === 1 ? "" : "s"}`;
    });
    const more = $("show-more"); if (more) more.hidden = passing <= shown;
  };
  // the slider and its mode are part of the query's address: a reload or a shared link keeps them
  const results = $("results");
  const served = results ? { pct: Number(results.dataset.minScore || 0), mode: results.dataset.scoreMode } : null;
  const remember = () => {
    if (!served) return;
    const url = new URL(window.location.href);
    // face searches have a floor of their own (the model's same-person level): 0 must be said
    if (Number(slider.value) > 0 || results.dataset.mode === "faces") url.searchParams.set("min_score", slider.value);
    else url.searchParams.delete("min_score");
    if (mode.value !== "abs") url.searchParams.set("score_mode", mode.value); else url.searchParams.delete("score_mode");
    // results the server already left out cannot come back here: a lower floor (or another mode) asks again
    if (Number(slider.value) < served.pct || (served.pct > 0 && mode.value !== served.mode)) window.location = url;
    else history.replaceState(history.state, "", url);
  };
  slider.addEventListener("input", apply); mode.addEventListener("change", apply);
  slider.addEventListener("change", remember); mode.addEventListener("change", remember);
  const more = $("show-more");
  if (more) more.addEventListener("click", () => { shown += pageSize; apply(); });
  apply();

  const download = (name, type, text) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type })); a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
  };
  if ($("download-csv")) {
    $("download-csv").addEventListener("click", () => download("submission.csv", "text/csv", JSON.parse($("export-csv").textContent)));
    $("download-json").addEventListener("click", () => download("results.json", "application/json", JSON.parse($("export-json").textContent)));
  }
});
