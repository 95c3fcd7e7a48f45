// The collection page: sign in, four answers side by side as they arrive, best/worst + why, continue.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { user: null, token: "", session: null, comparison: null, best: null, worst: null, turn: [] };

  function newId() {
    return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
  }

  // The page signs in with an end-user token minted by the app's backend (POST /v1/user-tokens) and
  // handed over as /ui#token=<token> (or ?token=); it is kept in sessionStorage and taken out of the URL,
  // in that order, so a reload at any moment (even before the first answer) still finds it.
  function tokenFromUrl() {
    const found = new URLSearchParams(location.hash.slice(1)).get("token")
      || new URLSearchParams(location.search).get("token");
    if (found) {
      sessionStorage.setItem("persona.token", found);
      history.replaceState(null, "", location.pathname);
    }
    return found;
  }

  // A refusal (400/401/403) says the token is no good; a 429, a 5xx (Redis briefly away: 503) or a
  // dropped connection says nothing about it, so sign-in asks again after these pauses.
  const SIGNIN_RETRY_MS = [250, 500, 1000, 2000, 4000];

  function transient(resp) {
    return resp === null || resp.status === 429 || resp.status >= 500;
  }

  async function fetchProfile() {
    try { return await fetch("/ui/profile", { headers: headers() }); } catch (e) { return null; }
  }

  async function profileForSignIn() {
    for (const pause of SIGNIN_RETRY_MS) {
      const resp = await fetchProfile();
      if (!transient(resp)) return resp;
      status("Signing in… the server did not answer, trying again.");
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
    return fetchProfile();
  }

  function headers() {
    return { "Content-Type": "application/json", Authorization: "Bearer " + state.token };
  }

  function status(text, isError) {
    $("status").textContent = text || "";
    $("status").className = isError ? "error" : "";
  }

  async function errorText(resp) {
    try { return (await resp.json()).error.message; } catch (e) { return resp.status + " " + resp.statusText; }
  }

  function showProfile(p) {
    $("persona-text").textContent = p.persona ? p.persona.text : "No persona yet.";
    $("persona-version").textContent = p.persona ? "version " + p.persona.version : "";
    $("judgement-count").textContent = p.judgements;
    $("record-count").textContent = p.records;
  }

  async function loadProfile() {
    const resp = await fetchProfile();
    if (resp === null) { status("The server cannot be reached.", true); return; }
    if (!resp.ok) { status(await errorText(resp), true); return; }
    showProfile(await resp.json());
  }

  async function loadHistory() {
    const resp = await fetch("/v1/sessions/" + encodeURIComponent(state.session), { headers: headers() });
    const messages = resp.ok ? (await resp.json()).messages : [];
    const list = $("history-list");
    list.replaceChildren();
    for (const m of messages) {
      if (m.role === "system") continue;
      const li = document.createElement("li");
      li.className = m.role;
      li.textContent = typeof m.content === "string" ? m.content : JSON.stringify(m.content);
      list.appendChild(li);
    }
    $("history-empty").hidden = list.children.length > 0;
    $("instruction-box").hidden = messages.length > 0;
  }

  function startSession() {
    state.session = newId();
    sessionStorage.setItem("persona.session", state.session);
    resetCandidates();
    loadHistory();
  }

  async function signIn(token) {
    state.token = token;
    const resp = await profileForSignIn();
    if (resp === null) { status("The server cannot be reached; reload the page to try again.", true); return; }
    if (!resp.ok) {
      status(await errorText(resp), true);
      if (!transient(resp)) sessionStorage.removeItem("persona.token");
      return;
    }
    const profile = await resp.json();
    state.user = profile.user;
    showProfile(profile);
    sessionStorage.setItem("persona.token", token);
    $("signin").hidden = true; $("workspace").hidden = false; $("whoami").hidden = false;
    $("whoami-user").textContent = state.user;
    state.session = sessionStorage.getItem("persona.session") || newId();
    sessionStorage.setItem("persona.session", state.session);
    await loadHistory();
    status("");
  }

  function resetCandidates() {
    $("candidates").replaceChildren();
    $("judge-form").hidden = true;
    $("rationale").value = "";
    Object.assign(state, { comparison: null, best: null, worst: null });
    updateJudgeButton();
  }

  function column(index, variant) {
    const col = document.createElement("article");
    col.className = "candidate pending";
    col.dataset.index = index;
    const h = document.createElement("h3");
    h.textContent = "Answer " + (index + 1);
    const v = document.createElement("div");
    v.className = "variant";
    v.textContent = "instruction as " + variant.instruction_role + ", temperature " + variant.temperature;
    const body = document.createElement("div");
    body.className = "content";
    body.textContent = "waiting…";
    const marks = document.createElement("div");
    marks.className = "marks";
    for (const kind of ["best", "worst"]) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "mark-" + kind; b.textContent = kind === "best" ? "Best" : "Worst";
      b.disabled = true;
      b.addEventListener("click", () => mark(kind, index));
      marks.appendChild(b);
    }
    col.append(h, v, body, marks);
    return col;
  }

  function fill(candidate) {
    const col = $("candidates").querySelector('[data-index="' + candidate.index + '"]');
    if (!col) return;
    col.classList.remove("pending");
    const body = col.querySelector(".content");
    if (candidate.content !== undefined) {
      body.textContent = candidate.content;
      col.classList.add("answered");
      col.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    } else {
      body.textContent = "This answer failed: " + candidate.error.message;
      col.classList.add("failed");
    }
  }

  function mark(kind, index) {
    const other = kind === "best" ? "worst" : "best";
    state[kind] = state[kind] === index ? null : index;
    if (state[other] === state[kind]) state[other] = null;
    for (const col of $("candidates").children) {
      const i = Number(col.dataset.index);
      col.classList.toggle("best", i === state.best);
      col.classList.toggle("worst", i === state.worst);
      col.querySelector(".mark-best").classList.toggle("on", i === state.best);
      col.querySelector(".mark-worst").classList.toggle("on", i === state.worst);
    }
    updateJudgeButton();
  }

  function updateJudgeButton() {
    $("judge-btn").disabled = !(state.comparison && state.best !== null && state.worst !== null);
  }

  function handle(event) {
    if (event.type === "comparison") {
      event.variants.forEach((v, i) => $("candidates").appendChild(column(i, v)));
    } else if (event.type === "candidate") {
      fill(event.candidate);
    } else if (event.type === "done") {
      state.comparison = event.comparison;
      $("judge-form").hidden = false;
      status("Mark the best and the worst answer.");
      updateJudgeButton();
    } else if (event.type === "error") {
      status(event.error.message, true);
    }
  }

  async function compare(ev) {
    ev.preventDefault();
    const prompt = $("prompt").value.trim();
    if (!prompt) return;
    resetCandidates();
    const messages = [];
    const instruction = $("instruction").value.trim();
    if (instruction && !$("instruction-box").hidden) messages.push({ role: "system", content: instruction });
    messages.push({ role: "user", content: prompt });
    $("compare-btn").disabled = true;
    status("Generating four answers…");
    try {
      const resp = await fetch("/v1/comparisons", {
        method: "POST", headers: headers(),
        body: JSON.stringify({ model: $("model").value, messages, session_id: state.session, stream: true }),
      });
      if (!resp.ok) { status(await errorText(resp), true); return; }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) handle(JSON.parse(line));
        }
      }
    } catch (e) {
      status("The request failed: " + e, true);
    } finally {
      $("compare-btn").disabled = false;
    }
  }

  async function judge(ev) {
    ev.preventDefault();
    if (!state.comparison) return;
    const body = { best: state.best, worst: state.worst, rationale: $("rationale").value.trim() };
    $("judge-btn").disabled = true;
    const resp = await fetch("/v1/comparisons/" + encodeURIComponent(state.comparison.id) + "/judgement", {
      method: "POST", headers: headers(), body: JSON.stringify(body),
    });
    if (!resp.ok) { status(await errorText(resp), true); updateJudgeButton(); return; }
    const result = await resp.json();
    $("prompt").value = "";
    resetCandidates();
    await Promise.all([loadHistory(), loadProfile()]);
    status("Saved: " + result.pairs_added + " preference pairs. Continue the conversation.");
  }

  // One plain chat answer (POST /v1/chat/completions as the signed-in user) and the signals on it
  // (POST /v1/feedback with its x-persona-response-id): thumbs, and regenerate (signal, then ask again).
  const quick = { messages: null, responseId: null };

  async function quickAnswer() {
    $("quick-status").textContent = "";
    $("quick-text").textContent = "…";
    $("quick-answer").hidden = false;
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ model: $("model").value, messages: quick.messages }),
    });
    if (!resp.ok) { $("quick-text").textContent = ""; status(await errorText(resp), true); return; }
    quick.responseId = resp.headers.get("x-persona-response-id");
    const body = await resp.json();
    $("quick-text").textContent = body.choices[0].message.content;
    for (const id of ["thumbs-up", "thumbs-down"]) $(id).classList.remove("on");
  }

  async function signal(kind) {
    if (!quick.responseId) return false;
    const resp = await fetch("/v1/feedback", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ response_id: quick.responseId, signal: kind }),
    });
    if (!resp.ok) { status(await errorText(resp), true); return false; }
    const reward = (await resp.json()).data[0].reward;
    $("quick-status").textContent = "Thanks (" + kind.replace("_", " ") + ", reward " + reward + ")";
    return true;
  }

  $("quick-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    quick.messages = [{ role: "user", content: $("quick-prompt").value }];
    await quickAnswer();
  });
  $("thumbs-up").addEventListener("click", async () => {
    if (await signal("thumbs_up")) { $("thumbs-up").classList.add("on"); $("thumbs-down").classList.remove("on"); }
  });
  $("thumbs-down").addEventListener("click", async () => {
    if (await signal("thumbs_down")) { $("thumbs-down").classList.add("on"); $("thumbs-up").classList.remove("on"); }
  });
  $("regenerate").addEventListener("click", async () => {
    if (await signal("regenerate")) await quickAnswer();
  });

  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("user-token").value.trim());
  });
  $("signout-btn").addEventListener("click", () => { sessionStorage.clear(); location.reload(); });
  $("new-session").addEventListener("click", startSession);
  $("prompt-form").addEventListener("submit", compare);
  $("judge-form").addEventListener("submit", judge);

  const token = tokenFromUrl() || sessionStorage.getItem("persona.token");
  if (token) signIn(token);
})();
