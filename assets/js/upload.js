// The upload page: files, folders and zips dropped or picked, sent with the tus protocol (resumable 8 MB chunks,
// each with its SHA-256), then handed to the server as one job. An interrupted file goes on from the offset the
// server has (HEAD); the upload's address is kept in localStorage, so picking the same file again after a reload
// resumes it too.
(() => {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const chunkSize = Number(form.dataset.chunk);
  const maxFile = Number(form.dataset.maxFile);
  const maxFiles = Number(form.dataset.maxFiles);
  const types = form.dataset.types.split(",");
  const list = document.getElementById("upload-list");
  const status = document.getElementById("upload-status");
  const errorBox = document.getElementById("upload-error");
  const start = document.getElementById("upload-start");
  const clear = document.getElementById("upload-clear");
  const zone = document.getElementById("dropzone");
  const partial = document.getElementById("upload-partial");
  let items = [];
  let busy = false;

  const mb = (n) => (n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + " GB" : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MB"
    : Math.max(n ? 1 : 0, Math.round(n / 1024)) + " KB");
  const ext = (name) => { const i = name.lastIndexOf("."); return i < 0 ? "" : name.slice(i).toLowerCase(); };
  const b64 = (bytes) => { let s = ""; new Uint8Array(bytes).forEach((b) => { s += String.fromCharCode(b); }); return btoa(s); };
  const tus = (extra) => Object.assign({ "Tus-Resumable": "1.0.0", "X-CSRFToken": csrf, Accept: "application/json" }, extra);

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function refresh() {
    const ready = items.filter((i) => !i.refused && !i.done).length;
    start.disabled = busy || ready === 0;
    clear.disabled = busy || items.length === 0;
    if (!busy) status.textContent = ready ? `${ready} file(s) ready` : "";
  }

  function add(file, path) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = path;
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = mb(file.size);
    const bar = document.createElement("progress");
    bar.max = Math.max(file.size, 1);
    bar.value = 0;
    const note = document.createElement("span");
    note.className = "note";
    li.append(name, size, bar, note);
    const item = { file, path, li, bar, note, refused: false, done: false, id: null };
    let why = "";
    if (file.size === 0) why = "empty file (0 bytes): not sent";
    else if (!types.includes(ext(path))) why = "not a video, an image or a zip: not sent";
    else if (file.size > maxFile) why = `larger than the limit of ${mb(maxFile)}: not sent`;
    else if (items.some((i) => i.path === path && !i.refused)) why = "the same name is in the list already: not sent";
    if (why) { item.refused = true; li.className = "refused"; note.textContent = why; }
    list.append(li);
    items.push(item);
  }

  function addFiles(files) {
    showError("");
    for (const [file, path] of files) {
      if (items.filter((i) => !i.refused).length >= maxFiles) { showError(`At most ${maxFiles} files per upload.`); break; }
      add(file, path);
    }
    refresh();
  }

  // A dropped folder: walk its entries (readEntries gives at most 100 at a time).
  function walk(entry, prefix) {
    return new Promise((resolve) => {
      if (entry.isFile) {
        entry.file((f) => resolve([[f, prefix + f.name]]), () => resolve([]));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        const all = [];
        const next = () => reader.readEntries(async (batch) => {
          if (!batch.length) {
            const nested = await Promise.all(all.map((e) => walk(e, prefix + entry.name + "/")));
            resolve(nested.flat());
          } else { all.push(...batch); next(); }
        }, () => resolve([]));
        next();
      } else resolve([]);
    });
  }

  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const entries = [...e.dataTransfer.items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    if (entries.every((x) => x)) addFiles((await Promise.all(entries.map((x) => walk(x, "")))).flat());
    else addFiles([...e.dataTransfer.files].map((f) => [f, f.name]));
  });
  document.getElementById("upload-files").addEventListener("change", (e) => {
    addFiles([...e.target.files].map((f) => [f, f.name]));
    e.target.value = "";
  });
  document.getElementById("upload-folder").addEventListener("change", (e) => {
    addFiles([...e.target.files].map((f) => [f, f.webkitRelativePath || f.name]));
    e.target.value = "";
  });
  clear.addEventListener("click", () => { items = []; list.replaceChildren(); showError(""); refresh(); });

  async function message(response) {
    try { const body = await response.json(); return body.error || response.statusText; } catch { return `${response.status} ${response.statusText}`; }
  }

  class Refused extends Error {}

  // One PATCH with upload progress (fetch has none): resolves to the new offset.
  function patch(url, offset, buffer, checksum, item) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PATCH", url);
      const headers = tus({ "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" });
      if (checksum) headers["Upload-Checksum"] = checksum;
      Object.entries(headers).forEach(([k, v]) => xhr.setRequestHeader(k, v));
      xhr.upload.onprogress = (e) => { item.bar.value = offset + e.loaded; };
      xhr.onload = () => {
        if (xhr.status === 204) resolve(Number(xhr.getResponseHeader("Upload-Offset")));
        else {
          let text = xhr.statusText;
          try { text = JSON.parse(xhr.responseText).error || text; } catch { /* not JSON */ }
          const retry = xhr.status >= 500 && xhr.status !== 507 || xhr.status === 409 || xhr.status === 460;
          reject(retry ? new Error(text) : new Refused(text));
        }
      };
      xhr.onerror = () => reject(new Error("the connection dropped"));
      xhr.send(buffer);
    });
  }

  async function where(url) {
    const r = await fetch(url, { method: "HEAD", headers: tus({}), credentials: "same-origin" });
    return r.ok ? Number(r.headers.get("Upload-Offset")) : null;
  }

  async function send(item) {
    const key = `ff-tus:${item.path}:${item.file.size}:${item.file.lastModified}`;
    let url = localStorage.getItem(key);
    let offset = url ? await where(url) : null;
    if (offset === null) {
      const meta = "relativePath " + b64(new TextEncoder().encode(item.path)) + ",filename " + b64(new TextEncoder().encode(item.file.name));
      const r = await fetch("/api/uploads/tus", { method: "POST", credentials: "same-origin",
        headers: tus({ "Upload-Length": String(item.file.size), "Upload-Metadata": meta }) });
      if (r.status !== 201) throw new Refused(await message(r));
      url = r.headers.get("Location");
      localStorage.setItem(key, url);
      offset = 0;
    } else if (offset > 0) item.note.textContent = `resuming at ${mb(offset)}`;
    let failures = 0;
    while (offset < item.file.size) {
      const buffer = await item.file.slice(offset, offset + chunkSize).arrayBuffer();
      const checksum = window.crypto && crypto.subtle ? "sha256 " + b64(await crypto.subtle.digest("SHA-256", buffer)) : null;
      try {
        offset = await patch(url, offset, buffer, checksum, item);
        failures = 0;
      } catch (err) {
        if (err instanceof Refused || ++failures > 5) throw err;
        item.note.textContent = `interrupted (${err.message}); retrying in ${failures * 2} s`;
        await new Promise((r) => setTimeout(r, failures * 2000));
        const known = await where(url).catch(() => null);
        if (known === null) throw new Error(`interrupted (${err.message}); pick the file again to resume`);
        offset = known;
      }
      item.bar.value = offset;
    }
    localStorage.removeItem(key);
    return url.split("/").pop();
  }

  // The job is made from the files that arrived; it is asked for only when every file arrived, or when the user
  // says to go on without the ones that did not.
  async function startJob() {
    const ids = items.filter((i) => i.done && i.id).map((i) => i.id);
    if (!ids.length) { showError("Nothing arrived yet; see each file's reason."); return; }
    status.textContent = "starting the job…";
    const r = await fetch("/api/uploads", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
      body: JSON.stringify({ uploads: ids }) });
    if (r.status !== 202) { showError(await message(r)); status.textContent = ""; return; }
    const job = await r.json();
    window.location.assign(job.url);
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    partial.hidden = true;
    busy = true;
    refresh();
    const todo = items.filter((i) => !i.refused && !i.done);
    for (const [n, item] of todo.entries()) {
      status.textContent = `sending ${n + 1} of ${todo.length}: ${item.path}`;
      item.li.className = "sending";
      try {
        item.id = await send(item);
        item.done = true;
        item.li.className = "done";
        item.note.textContent = "sent";
      } catch (err) {
        item.li.className = "failed";
        item.note.textContent = err.message;
      }
    }
    busy = false;
    refresh();
    const missing = items.filter((i) => !i.refused && !i.done);
    if (missing.length) {
      showError(`${missing.length} file(s) did not arrive: ${missing.map((i) => i.path).join(", ")}. ` +
        "Press “Upload and index” to try them again (they go on where they stopped), or “Index what arrived” to go on without them.");
      partial.hidden = !items.some((i) => i.done);
      status.textContent = "";
      return;
    }
    await startJob();
  });
  partial.addEventListener("click", () => { partial.hidden = true; startJob(); });
  refresh();
})();
