// The console's only script: refresh the pipelines table, follow one pipeline live.
// Every page works without it; this adds the live parts.
"use strict";

function refreshList(box) {
  const every = Number(box.dataset.refreshMs) || 3000;
  const tick = async () => {
    try {
      const answer = await fetch(box.dataset.src + window.location.search,
                                 { credentials: "same-origin" });
      if (answer.status === 401) { window.location.assign("/login"); return; }
      if (answer.ok) { box.innerHTML = await answer.text(); }
    } catch (error) { /* the next tick tries again */ }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

function followPipeline(live) {
  const log = document.getElementById("log");
  const progress = document.getElementById("progress");
  let pending = null;
  const reload = async () => {
    pending = null;
    try {
      const answer = await fetch(live.dataset.src, { credentials: "same-origin" });
      if (answer.ok) { live.innerHTML = await answer.text(); }
    } catch (error) { /* shown on the next event */ }
  };
  const soon = (ms) => { if (pending === null) { pending = window.setTimeout(reload, ms); } };
  const source = new EventSource(live.dataset.events);
  source.addEventListener("pipeline", (message) => {
    const event = JSON.parse(message.data);
    if (event.kind === "progress") {
      progress.textContent = (event.stage ? event.stage + ": " : "") + event.text;
      return;
    }
    const line = document.createElement("li");
    line.value = event.seq;
    line.textContent = (event.stage ? "[" + event.stage + "] " : "") + event.text;
    line.dataset.kind = event.kind;
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
    soon(event.kind === "transition" ? 100 : 1500);
  });
  source.addEventListener("end", () => { source.close(); progress.textContent = "ended"; soon(50); });
  source.addEventListener("failure", (message) => {
    source.close();
    progress.textContent = "live view stopped: " + JSON.parse(message.data);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("pipeline-rows");
  if (list) { refreshList(list); }
  const live = document.getElementById("live");
  if (live) { followPipeline(live); }
});
