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

function streamChat(form) {
  const log = document.getElementById("chat-log");
  const history = document.getElementById("chat-history");
  const message = document.getElementById("chat-message");
  const button = form.querySelector("button[type=submit]");
  const turn = (role, text) => {
    const item = document.createElement("li");
    item.className = "turn-" + role;
    const who = document.createElement("strong");
    who.textContent = role === "user" ? "You: " : "Model: ";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(who, body);
    log.appendChild(item);
    return body;
  };
  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const text = message.value.trim();
    if (!text) { return; }
    const fields = new URLSearchParams(new FormData(form));
    turn("user", text);
    const answer = turn("assistant", "");
    message.value = "";
    button.disabled = true;
    try {
      const reply = await fetch(form.dataset.stream, { method: "POST", body: fields,
                                                       credentials: "same-origin" });
      if (!reply.ok) { answer.textContent = "[no answer: " + reply.status + "]"; return; }
      const reader = reply.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) { break; }
        answer.textContent += decoder.decode(value, { stream: true });
      }
      const turns = JSON.parse(history.value || "[]");
      turns.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
      history.value = JSON.stringify(turns);
    } finally {
      button.disabled = false;
      message.focus();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("pipeline-rows");
  if (list) { refreshList(list); }
  const live = document.getElementById("live");
  if (live) { followPipeline(live); }
  const chat = document.getElementById("chat-form");
  if (chat) { streamChat(chat); }
});
