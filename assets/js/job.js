// A job's page: polls /api/jobs/<id> every second while it is queued or running and updates the stages, the
// per-file results and the buttons in place; cancel and retry call the API.
(() => {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const api = root.dataset.api;
  const el = (id) => document.getElementById(id);
  const live = (s) => s === "queued" || s === "running";

  function badge(text) {
    const span = document.createElement("span");
    span.className = `status status-${text}`;
    span.textContent = text;
    return span;
  }

  function render(job) {
    root.dataset.status = job.status;
    const status = el("job-status");
    status.className = `status status-${job.status}`;
    status.textContent = job.status;
    el("job-message").textContent = job.message;
    el("job-ahead").textContent = job.status === "queued" && job.ahead ? `${job.ahead} job(s) before it` : "";
    el("job-attempts").textContent = job.attempts > 1 ?
      `attempt ${job.attempts}: resumed after the server stopped during an earlier one` : "";
    root.querySelectorAll("#job-stages tr[data-stage]").forEach((tr) => {
      const n = job.stages[tr.dataset.stage] || 0;
      tr.querySelector(".stage-count").textContent = n;
      tr.hidden = !live(job.status) && !n;
    });
    const starting = job.status === "running" && !Object.keys(job.stages).length;
    el("job-progress").textContent = `${job.progress.done} of ${job.progress.files} file(s) done` +
      (starting ? " · starting (loading the models takes a few seconds)" : "");
    el("job-counts").textContent = Object.entries(job.counts).sort().map(([k, n]) => `${n} ${k}`).join(", ");
    const body = root.querySelector("#job-files tbody");
    body.replaceChildren(...job.files.map((f) => {
      const tr = document.createElement("tr");
      tr.className = `file-${f.status}`;
      const name = document.createElement("td");
      name.className = "name";
      if (f.item) {
        const a = document.createElement("a");
        a.href = f.item.startsWith("video:") ? `/collection/videos/${encodeURIComponent(f.item.slice(6))}` : `/item/${f.item}`;
        a.textContent = f.name;
        name.append(a);
      } else name.textContent = f.name;
      const result = document.createElement("td");
      result.append(badge(f.status));
      const why = document.createElement("td");
      why.textContent = f.reason || "";
      if (f.boxes && f.boxes.length) {
        const ul = document.createElement("ul");
        ul.className = "orphans";
        f.boxes.forEach((b) => {
          const li = document.createElement("li");
          const a = document.createElement("a");
          a.href = "/annotations?orphaned=1";
          a.textContent = `box ${b.id}`;
          li.append(a, ` · ${b.label} · ${b.target}`);
          ul.append(li);
        });
        why.append(ul);
      }
      tr.append(name, result, why);
      return tr;
    }));
    el("job-cancel").hidden = !live(job.status);
    el("job-retry").hidden = !job.retryable;
    el("job-search").hidden = job.status !== "done";
    if (el("job-discard")) el("job-discard").hidden = live(job.status);
  }

  async function poll() {
    try {
      const r = await fetch(api, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (r.ok) render(await r.json());
    } catch { /* the server restarting: try again */ }
    if (live(root.dataset.status)) setTimeout(poll, 1000);
  }

  async function act(button) {
    button.disabled = true;
    const r = await fetch(button.dataset.url, { method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": csrf, Accept: "application/json" } });
    button.disabled = false;
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { el("job-action-status").textContent = body.error || r.statusText; return null; }
    return body;
  }

  el("job-cancel").addEventListener("click", async (e) => {
    const job = await act(e.target);
    if (job) { render(job); el("job-action-status").textContent = "cancelled"; }
  });
  el("job-retry").addEventListener("click", async (e) => {
    const job = await act(e.target);
    if (job) window.location.assign(job.url);
  });
  if (el("job-discard")) {
    el("job-discard").addEventListener("click", async (e) => {
      const body = await act(e.target);
      if (body) el("job-action-status").textContent = body.removed.length ? `removed ${body.removed.join(", ")}` : "nothing to remove";
    });
  }
  if (live(root.dataset.status)) setTimeout(poll, 500);
})();
