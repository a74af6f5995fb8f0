// ragloom's page: pick a collection, ask, watch the answer stream in (POST /v1/answer with SSE), read the
// cited passages beside it. Plain DOM, no libraries, nothing loaded from elsewhere: works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenKey = "ragloom-token";

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function say(message) {
  $("status").textContent = message || "";
}

async function explain(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    return response.statusText;
  }
}

async function loadCollections() {
  const response = await fetch("/v1/collections", { headers: headers() });
  if (!response.ok) {
    say(`cannot list the collections (${response.status}): ${await explain(response)}`);
    return;
  }
  const { collections } = await response.json();
  const select = $("collection");
  const previous = select.value;
  // replaced in one step, so that a question asked meanwhile never finds the list empty
  select.replaceChildren(...collections.map((c) => new Option(`${c.name} (${c.documents} documents)`, c.name)));
  if (previous) select.value = previous;
  say(select.options.length ? "" : "this server serves no collection");
}

function marker(n, passages) {
  const button = document.createElement("button");
  button.className = "marker";
  button.type = "button";
  button.textContent = `[${n}]`;
  button.title = passages[n - 1].title || passages[n - 1].id;
  button.addEventListener("click", () => showPassage(n));
  return button;
}

// The answer text with each [n] marker turned into a button that shows passage n; when the model wrote no
// marker, one per cited passage (the server's citations come from attribution, not from the markers).
function renderAnswer(text, passages, citations) {
  const answer = $("answer");
  answer.replaceChildren();
  let last = 0;
  let markers = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    const n = Number(match[1]);
    answer.append(text.slice(last, match.index));
    if (n >= 1 && n <= passages.length) {
      answer.append(marker(n, passages));
      markers += 1;
    } else {
      answer.append(match[0]);
    }
    last = match.index + match[0].length;
  }
  answer.append(text.slice(last));
  if (markers === 0) {
    passages.forEach((p, i) => {
      if (citations.includes(p.id)) answer.append(" ", marker(i + 1, passages));
    });
  }
}

function renderSources(passages, citations) {
  const list = $("sources");
  list.replaceChildren();
  passages.forEach((p, i) => {
    const item = document.createElement("li");
    item.id = `passage-${i + 1}`;
    item.dataset.id = p.id;
    if (citations.includes(p.id)) item.classList.add("cited");
    const title = document.createElement("a");
    title.className = "title";
    title.href = "#";
    title.textContent = p.title || p.id;
    title.addEventListener("click", (event) => {
      event.preventDefault();
      showPassage(i + 1);
    });
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = p.text;
    item.append(title, text);
    list.append(item);
  });
  const first = passages.findIndex((p) => citations.includes(p.id));
  if (first >= 0) showPassage(first + 1);
}

function showPassage(n) {
  for (const item of $("sources").children) item.classList.remove("shown");
  const item = $(`passage-${n}`);
  if (item) {
    item.classList.add("shown");
    item.scrollIntoView({ block: "nearest" });
  }
}

function renderTimings(t) {
  $("timings").textContent =
    `retrieval ${t.retrieve_s.toFixed(2)} s · first token ${t.first_token_s.toFixed(2)} s · ` +
    `${t.tokens} tokens in ${t.generate_s.toFixed(2)} s`;
}

// Server-Sent Events from a fetch body: yields {event, data} as each event's blank line arrives.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  const collection = $("collection").value;
  if (!question || !collection) {
    say(collection ? "type a question" : "no collection to ask: check the token, or the server's collections");
    return;
  }
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.state = "streaming";
  answer.dataset.pieces = "0";
  $("sources").replaceChildren();
  $("timings").textContent = "";
  $("ask").disabled = true;
  say("");
  try {
    const response = await fetch("/v1/answer", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ collection, question, stream: true }),
    });
    if (!response.ok) throw new Error(`${response.status}: ${await explain(response)}`);
    for await (const { event: kind, data } of events(response)) {
      if (kind === "token") {
        answer.append(data.text);
        answer.dataset.pieces = String(Number(answer.dataset.pieces) + 1);
      } else if (kind === "done") {
        renderAnswer(data.answer, data.passages, data.citations);
        renderSources(data.passages, data.citations);
        renderTimings(data.timings);
        answer.dataset.state = "done";
      } else if (kind === "error") {
        throw new Error(`${data.status}: ${data.detail}`);
      }
    }
    if (answer.dataset.state !== "done") throw new Error("the answer stream ended early");
  } catch (error) {
    answer.dataset.state = "failed";
    say(`the question failed: ${error.message}`);
  } finally {
    $("ask").disabled = false;
  }
}

$("token").value = localStorage.getItem(tokenKey) || "";
$("token").addEventListener("change", () => {
  localStorage.setItem(tokenKey, $("token").value.trim());
  loadCollections();
});
$("ask-form").addEventListener("submit", ask);
loadCollections();
