// Annotation page: draw, move, resize, label, save, delete and undo boxes on one frame.
// Boxes live in the image's own pixels; the canvas only scales them for display.
// Every change is sent at once through /api/annotations (session cookie + CSRF header).
// Machine boxes (detections) are drawn dashed beneath the human boxes and never replace one: a click selects one,
// A accepts it (it becomes a human box, selected for correction), R rejects it (greyed, hidden, restorable).
(function () {
  const data = JSON.parse(document.getElementById("annotate-data").textContent);
  const img = document.getElementById("picture");
  const canvas = document.getElementById("boxes-canvas");
  const ctx = canvas.getContext("2d");
  const labelInput = document.getElementById("label");
  const noteInput = document.getElementById("note");
  const saveBtn = document.getElementById("save-button");
  const deleteBtn = document.getElementById("delete-button");
  const undoBtn = document.getElementById("undo-button");
  const searchBtn = document.getElementById("search-box-button");
  const statusEl = document.getElementById("status");
  const list = document.getElementById("box-list");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const HANDLE = 8; // px on screen

  let boxes = data.boxes; // saved records from the server
  const machine = data.detections || []; // machine boxes: {id, label, score, box, status, annotation_id}
  let picked = null; // the selected machine box (never `selected`: saving and deleting act on human boxes only)
  let pressedMachine = null; // the machine box under a press that may turn out to be a click
  let showMachine = true, showRejected = false;
  const machineList = document.getElementById("machine-list");
  const showMachineEl = document.getElementById("show-machine");
  const showRejectedEl = document.getElementById("show-rejected");
  let selected = null; // a record, or the draft
  let draft = null; // {box: [...]} not saved yet
  let drag = null; // {mode, start, orig}
  let drawInside = false; // D toggles: a drag always draws a new box, even inside another (a face in a person)
  const undo = [];
  const modeEl = document.getElementById("draw-mode");
  const help = document.getElementById("help-overlay");

  function scale() { return img.clientWidth / data.width; }
  function say(text, bad) { statusEl.textContent = text; statusEl.classList.toggle("error", !!bad); }

  async function api(method, url, body) {
    const r = await fetch(url, {
      method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const payload = r.status === 204 ? {} : await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(payload.error || `HTTP ${r.status}`);
    return payload;
  }
  const itemUrl = (id) => `${data.api}/${id}`;

  function clampBox([x, y, w, h]) {
    if (w < 0) { x += w; w = -w; }
    if (h < 0) { y += h; h = -h; }
    x = Math.max(0, Math.min(Math.round(x), data.width - 1));
    y = Math.max(0, Math.min(Math.round(y), data.height - 1));
    w = Math.max(1, Math.min(Math.round(w), data.width - x));
    h = Math.max(1, Math.min(Math.round(h), data.height - y));
    return [x, y, w, h];
  }

  function iou(a, b) {
    const ix = Math.max(0, Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]));
    const iy = Math.max(0, Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]));
    const inter = ix * iy, union = a[2] * a[3] + b[2] * b[3] - inter;
    return union > 0 ? inter / union : 0;
  }
  // An accepted machine box is drawn as its human box only; so is one a human box of the same label already covers.
  function covered(m) {
    if (m.status === "accepted") return true;
    return boxes.some((b) => b.label === m.label && iou(b.box, m.box) >= 0.9);
  }
  function machineShown(m) {
    return showMachine && !covered(m) && (m.status !== "rejected" || showRejected);
  }

  function drawMachine(s) {
    ctx.save();
    ctx.font = "12px system-ui, sans-serif";
    for (const m of machine) {
      if (!machineShown(m)) continue;
      const [x, y, w, h] = m.box.map((v) => v * s);
      const rejected = m.status === "rejected", isPicked = m === picked;
      ctx.setLineDash(rejected ? [2, 4] : [6, 4]);
      ctx.lineWidth = isPicked ? 3 : 1.5;
      ctx.strokeStyle = rejected ? "#8a8f98" : isPicked ? "#ffd166" : "#ff9f43";
      if (isPicked) { ctx.fillStyle = "rgba(255,159,67,.18)"; ctx.fillRect(x, y, w, h); }
      ctx.strokeRect(x, y, w, h);
      if (!isPicked && (w < 44 || h < 16)) continue; // a small box's tag would cover its neighbours: shown when picked
      const text = `${m.label} ${m.score.toFixed(2)}`;
      const tw = ctx.measureText(text).width + 6;
      const ty = Math.min(y + h, canvas.height) - 15; // inside the bottom-left corner: human labels sit above boxes
      ctx.fillStyle = rejected ? "rgba(40,40,40,.7)" : "rgba(90,45,0,.78)"; ctx.fillRect(x, Math.max(0, ty), tw, 15);
      ctx.fillStyle = rejected ? "#bbb" : "#fff"; ctx.fillText(text, x + 3, Math.max(11, ty + 11));
    }
    ctx.restore();
  }

  function draw() {
    canvas.width = img.clientWidth; canvas.height = img.clientHeight;
    const s = scale();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    drawMachine(s); // beneath: a machine box never hides a human box
    const all = draft ? boxes.concat([draft]) : boxes;
    for (const b of all) {
      const [x, y, w, h] = b.box.map((v) => v * s);
      const isSel = b === selected;
      ctx.lineWidth = isSel ? 3 : 2;
      ctx.strokeStyle = b === draft ? "#ffd400" : isSel ? "#4cc9f0" : "#2ecc71";
      ctx.strokeRect(x, y, w, h);
      if (b.label) {
        ctx.font = "13px system-ui, sans-serif";
        const tw = ctx.measureText(b.label).width + 8;
        ctx.fillStyle = "rgba(0,0,0,.7)"; ctx.fillRect(x, Math.max(0, y - 18), tw, 18);
        ctx.fillStyle = "#fff"; ctx.fillText(b.label, x + 4, Math.max(13, y - 5));
      }
      if (isSel) {
        ctx.fillStyle = "#4cc9f0";
        for (const [cx, cy] of corners(b.box)) ctx.fillRect(cx * s - HANDLE / 2, cy * s - HANDLE / 2, HANDLE, HANDLE);
      }
    }
    renderList();
    renderMachine();
    const has = !!selected;
    saveBtn.disabled = !has; deleteBtn.disabled = !has; searchBtn.disabled = !has;
    undoBtn.disabled = undo.length === 0;
  }

  function corners([x, y, w, h]) { return [[x, y], [x + w, y], [x, y + h], [x + w, y + h]]; }

  function renderList() {
    list.replaceChildren();
    for (const b of boxes) {
      const li = document.createElement("li");
      li.dataset.id = b.id;
      li.className = b === selected ? "selected" : "";
      const label = document.createElement("strong"); label.className = "box-label"; label.textContent = b.label;
      const meta = document.createElement("span"); meta.className = "hint";
      meta.textContent = ` [${b.box.join(", ")}] by ${b.author}`;
      li.append(label, meta);
      if (b.note) { const n = document.createElement("div"); n.className = "box-note"; n.textContent = b.note; li.append(n); }
      li.addEventListener("click", () => select(b));
      list.append(li);
    }
  }

  function renderMachine() {
    machineList.replaceChildren();
    machineList.hidden = !showMachine;
    let live = 0, rejected = 0;
    for (const m of machine) {
      if (m.status === "rejected") rejected++; else live++;
      const li = document.createElement("li");
      li.dataset.id = m.id;
      li.dataset.status = m.status;
      li.className = `${m.status}${m === picked ? " selected" : ""}`;
      li.hidden = m.status === "rejected" && !showRejected;
      const label = document.createElement("strong"); label.className = "machine-label"; label.textContent = m.label;
      const meta = document.createElement("span"); meta.className = "hint";
      meta.textContent = ` ${m.score.toFixed(2)} [${m.box.map((v) => Math.round(v)).join(", ")}]` +
        (m.status === "accepted" ? ` → box ${m.annotation_id}` : m.status === "rejected" ? " rejected" : "");
      const actions = document.createElement("span"); actions.className = "machine-actions";
      const button = (text, cls, fn) => {
        const bt = document.createElement("button"); bt.type = "button"; bt.textContent = text; bt.className = cls;
        bt.addEventListener("click", (ev) => { ev.stopPropagation(); fn(m); });
        actions.append(bt);
      };
      if (m.status === "new") { button("Accept", "accept-machine", accept); button("Reject", "reject-machine", reject); }
      else if (m.status === "rejected") button("Restore", "restore-machine", restore);
      else button("Show box", "show-accepted", (d) => { const b = boxes.find((r) => r.id === d.annotation_id); if (b) select(b); });
      li.append(label, meta, actions);
      li.addEventListener("click", () => { if (m.status !== "accepted") pick(m); });
      machineList.append(li);
    }
    document.getElementById("machine-count").textContent = String(live);
    document.getElementById("rejected-count").textContent = String(rejected);
  }

  function pick(m) {
    select(null);
    picked = m;
    say(`Machine box: ${m.label} (score ${m.score.toFixed(2)}). A accepts it as your box, R ${m.status === "rejected" ? "restores" : "rejects"} it.`);
    draw();
  }

  const machineUrl = (m, action) => `${data.detections_api}/${m.id}/${action}`;

  async function accept(m) {
    if (!m || m.status === "accepted") return;
    try {
      const out = await api("POST", machineUrl(m, "accept"));
      Object.assign(m, out.detection);
      boxes.push(out.annotation);
      undo.push({ type: "create", id: out.annotation.id });
      addLabelOption(out.annotation.label);
      select(out.annotation); // the usual edit flow corrects it: drag, resize, relabel and Save
      say(`Accepted as box ${out.annotation.id} (${out.annotation.label}): drag or resize it, or change the label and Save, to correct it.`);
      canvas.focus();
    } catch (e) { say(e.message, true); draw(); }
  }

  async function reject(m) {
    if (!m || m.status !== "new") return;
    try {
      Object.assign(m, (await api("POST", machineUrl(m, "reject"))).detection);
      undo.push({ type: "reject", id: m.id });
      if (picked === m && !showRejected) picked = null;
      say(`Rejected the machine box ${m.label}; "show rejected" lists it to restore.`);
    } catch (e) { say(e.message, true); }
    draw();
  }

  async function restore(m) {
    if (!m || m.status !== "rejected") return;
    try {
      Object.assign(m, (await api("POST", machineUrl(m, "restore"))).detection);
      say(`Restored the machine box ${m.label}.`);
    } catch (e) { say(e.message, true); }
    draw();
  }

  // A deleted human box frees the machine box it was accepted from (the server unlinks it too).
  function unlink(annotationId) {
    for (const m of machine) if (m.annotation_id === annotationId) { m.status = "new"; m.annotation_id = null; }
  }

  function machineAt([px, py]) {
    let best = null;
    for (const m of machine) {
      if (!machineShown(m)) continue;
      const [x, y, w, h] = m.box;
      if (px >= x && px <= x + w && py >= y && py <= y + h && (!best || w * h < best.box[2] * best.box[3])) best = m;
    }
    return best;
  }

  function select(b) {
    picked = null;
    selected = b;
    labelInput.value = b ? b.label || "" : "";
    noteInput.value = b ? b.note || "" : "";
    draw();
  }

  function toImage(ev) {
    const r = canvas.getBoundingClientRect();
    const s = scale();
    return [(ev.clientX - r.left) / s, (ev.clientY - r.top) / s];
  }

  function hit([px, py]) {
    const s = scale();
    if (selected) {
      const i = corners(selected.box).findIndex(([cx, cy]) => Math.abs(cx - px) * s <= HANDLE && Math.abs(cy - py) * s <= HANDLE);
      if (i >= 0) return { mode: "resize", corner: i, target: selected };
    }
    const all = draft ? [draft].concat(boxes.slice().reverse()) : boxes.slice().reverse();
    for (const b of all) {
      const [x, y, w, h] = b.box;
      // a press inside the selected box moves it; inside another box it only selects that box
      if (px >= x && px <= x + w && py >= y && py <= y + h) return { mode: b === selected ? "move" : "select", target: b };
    }
    return { mode: "draw" };
  }

  canvas.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    const p = toImage(ev);
    const h = ev.shiftKey || drawInside ? { mode: "draw" } : hit(p);
    pressedMachine = h.mode === "draw" && !ev.shiftKey && !drawInside ? machineAt(p) : null; // a click picks it
    if (h.mode === "select") { select(h.target); return; }
    if (h.mode === "draw") {
      draft = { box: [p[0], p[1], 0, 0], label: "" };
      selected = draft;
    } else {
      if (h.target !== selected) select(h.target);
    }
    drag = { mode: h.mode, corner: h.corner, start: p, orig: selected.box.slice() };
    draw();
  });

  canvas.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const [px, py] = toImage(ev);
    const dx = px - drag.start[0], dy = py - drag.start[1];
    const [x, y, w, h] = drag.orig;
    if (drag.mode === "draw") selected.box = [x, y, dx, dy];
    else if (drag.mode === "move") {
      selected.box = [Math.max(0, Math.min(x + dx, data.width - w)), Math.max(0, Math.min(y + dy, data.height - h)), w, h];
    } else {
      const left = drag.corner % 2 === 0, top = drag.corner < 2;
      const nx = left ? x + dx : x, ny = top ? y + dy : y;
      selected.box = [nx, ny, left ? w - dx : w + dx, top ? h - dy : h + dy];
    }
    draw();
  });

  canvas.addEventListener("pointerup", async () => {
    if (!drag) return;
    const mode = drag.mode, orig = drag.orig;
    drag = null;
    selected.box = clampBox(selected.box);
    if (mode === "draw") {
      if (selected.box[2] < 3 || selected.box[3] < 3) {
        draft = null; selected = null;
        if (pressedMachine) pick(pressedMachine); else { picked = null; draw(); }
        return;
      }
      picked = null;
      say("New box: type a label and press Save (Enter).");
      labelInput.value = ""; noteInput.value = "";
      labelInput.focus();
      draw();
      return;
    }
    draw();
    if (selected === draft || orig.join() === selected.box.join()) return;
    const rec = selected;
    try {
      const saved = await api("PATCH", itemUrl(rec.id), { box: rec.box, version: rec.version });
      undo.push({ type: "update", id: rec.id, before: { box: orig } });
      Object.assign(rec, saved);
      say(`Box ${rec.id} moved.`);
    } catch (e) { rec.box = orig; say(e.message, true); }
    draw();
  });

  async function save(ev) {
    if (ev) ev.preventDefault();
    if (!selected) return;
    const label = labelInput.value.trim(), note = noteInput.value;
    if (!label) { say("A box needs a label.", true); labelInput.focus(); return; }
    try {
      if (selected === draft) {
        const saved = await api("POST", data.api, { ...data.target, box: draft.box, label, note });
        boxes.push(saved); draft = null; selected = saved;
        undo.push({ type: "create", id: saved.id });
        say(`Saved box ${saved.id} (${saved.label}).`);
        canvas.focus(); // keys (N, P, Delete...) act on the page again, not in the label field
      } else {
        const rec = selected;
        const before = { label: rec.label, note: rec.note };
        const saved = await api("PATCH", itemUrl(rec.id), { label, note, version: rec.version });
        Object.assign(rec, saved);
        undo.push({ type: "update", id: rec.id, before });
        say(`Updated box ${rec.id}.`);
        canvas.focus();
      }
      addLabelOption(label);
    } catch (e) { say(e.message, true); }
    draw();
  }

  function addLabelOption(label) {
    const dl = document.getElementById("labels-list");
    if (![...dl.options].some((o) => o.value === label)) { const o = document.createElement("option"); o.value = label; dl.append(o); }
  }

  async function removeSelected() {
    if (!selected) return;
    if (selected === draft) { draft = null; selected = null; draw(); return; }
    const rec = selected;
    try {
      await api("DELETE", `${itemUrl(rec.id)}?version=${rec.version}`);
      boxes = boxes.filter((b) => b !== rec);
      unlink(rec.id);
      undo.push({ type: "delete", record: rec });
      selected = null;
      say(`Deleted box ${rec.id}.`);
    } catch (e) { say(e.message, true); }
    draw();
  }

  async function undoLast() {
    const step = undo.pop();
    if (!step) return;
    try {
      if (step.type === "create") {
        const rec = boxes.find((b) => b.id === step.id);
        await api("DELETE", `${itemUrl(step.id)}?version=${rec.version}`);
        boxes = boxes.filter((b) => b !== rec);
        unlink(rec.id);
        if (selected === rec) selected = null;
      } else if (step.type === "reject") {
        const m = machine.find((d) => d.id === step.id);
        Object.assign(m, (await api("POST", machineUrl(m, "restore"))).detection);
      } else if (step.type === "update") {
        const rec = boxes.find((b) => b.id === step.id);
        Object.assign(rec, await api("PATCH", itemUrl(rec.id), { ...step.before, version: rec.version }));
      } else {
        const r = step.record;
        boxes.push(await api("POST", data.api, { ...data.target, box: r.box, label: r.label, note: r.note }));
      }
      say("Undone.");
    } catch (e) { say(`Could not undo: ${e.message}`, true); undo.push(step); }
    draw();
  }

  document.getElementById("box-form").addEventListener("submit", save);
  deleteBtn.addEventListener("click", removeSelected);
  undoBtn.addEventListener("click", undoLast);
  searchBtn.addEventListener("click", () => {
    if (!selected) return;
    document.getElementById("region-box").value = clampBox(selected.box).join(",");
    document.getElementById("region-search").submit();
  });
  // Leaving with an unsaved box asks first (a dismissed question keeps the box and stays here).
  function go(url, which) {
    if (!url) { say(`This is the ${which} keyframe of the video.`); return; }
    if (draft && !window.confirm("The new box is not saved. Leave this frame and discard it?")) {
      say("The new box is kept: type a label and press Save (Enter), or Esc to discard it.");
      return;
    }
    window.location = url;
  }
  function setDrawInside(on) {
    drawInside = on;
    modeEl.textContent = on ? "Drawing inside boxes (D)" : "Draw inside boxes (D)";
    modeEl.setAttribute("aria-pressed", String(on));
  }
  modeEl.addEventListener("click", () => setDrawInside(!drawInside));
  document.querySelectorAll("#prev-link, #next-link").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault(); go(a.href, "");
  }));
  document.getElementById("help-close").addEventListener("click", () => { help.hidden = true; });
  document.addEventListener("keydown", (ev) => {
    const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z" && !typing) { ev.preventDefault(); undoLast(); }
    else if (typing && ev.key === "Escape") {  // leave the field: an unsaved box is discarded, the keys work again
      if (draft) { draft = null; select(null); say("The new box was discarded."); }
      canvas.focus();
    } else if (typing) return;
    else if (ev.key === "?") help.hidden = !help.hidden;
    else if (ev.key === "Escape" && !help.hidden) help.hidden = true;
    else if (ev.key === "Delete" || ev.key === "Backspace") { ev.preventDefault(); removeSelected(); }
    else if (ev.key.toLowerCase() === "n") go(data.next, "last");
    else if (ev.key.toLowerCase() === "p") go(data.previous, "first");
    else if (ev.key.toLowerCase() === "d") setDrawInside(!drawInside);
    else if (ev.key.toLowerCase() === "a" && picked && !ev.ctrlKey && !ev.metaKey) { ev.preventDefault(); accept(picked); }
    else if (ev.key.toLowerCase() === "r" && picked && !ev.ctrlKey && !ev.metaKey) {
      ev.preventDefault();
      if (picked.status === "rejected") restore(picked); else reject(picked);
    } else if (ev.key === "Escape") { draft = null; select(null); }
  });
  showMachineEl.addEventListener("change", () => {
    showMachine = showMachineEl.checked;
    if (!showMachine) picked = null;
    draw();
  });
  showRejectedEl.addEventListener("change", () => {
    showRejected = showRejectedEl.checked;
    if (picked && picked.status === "rejected" && !showRejected) picked = null;
    draw();
  });
  window.addEventListener("resize", draw);
  if (img.complete) draw(); else img.addEventListener("load", draw);
})();
