// The evaluation page: sign in to a run, ask, see three blind answers A/B/C, pick one (or tie/skip), repeat.
// The API never tells which answer is which condition, and neither does this page.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { user: null, token: "", evaluation: null, trial: null, choice: null, answered: 0 };

  // Signed in with an end-user token from the app's backend: /ui/evaluate?evaluation=<id>#token=<token>
  // (or ?token=), or the token the collection page kept in sessionStorage. Never the app key.
  function tokenFromUrl() {
    const found = new URLSearchParams(location.hash.slice(1)).get("token")
      || new URLSearchParams(location.search).get("token");
    if (found) {
      const params = new URLSearchParams(location.search);
      params.delete("token");
      const query = params.toString();
      history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
    }
    return found;
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

  function runUrl(suffix) {
    return "/v1/evaluations/" + encodeURIComponent(state.evaluation) + (suffix || "");
  }

  async function signIn(token, evaluation) {
    Object.assign(state, { token, evaluation });
    const resp = await fetch(runUrl(), { headers: headers() });
    if (!resp.ok) { status(await errorText(resp), true); return; }
    const run = await resp.json();
    const user = run.user;
    state.user = user;
    sessionStorage.setItem("persona.token", token);
    sessionStorage.setItem("persona.eval.run", evaluation);
    state.answered = run.answered;
    $("answered-count").textContent = String(run.answered);
    $("whoami-user").textContent = user;
    $("whoami-run").textContent = run.name || run.id;
    $("signin").hidden = true; $("eval-workspace").hidden = false; $("whoami").hidden = false;
    status(run.status === "open" ? "" : "This evaluation is closed.", run.status !== "open");
    $("eval-prompt").focus();
  }

  function signOut() {
    for (const k of ["persona.token", "persona.eval.run"]) sessionStorage.removeItem(k);
    Object.assign(state, { user: null, token: "", evaluation: null });
    resetTrial();
    $("signin").hidden = false; $("eval-workspace").hidden = true; $("whoami").hidden = true;
  }

  function resetTrial() {
    Object.assign(state, { trial: null, choice: null });
    $("answers").replaceChildren();
    $("answers").className = "";
    $("choice-form").hidden = true;
    $("eval-rationale").value = "";
    $("eval-ask-btn").disabled = false;
    showChoice();
  }

  function showChoice() {
    for (const b of document.querySelectorAll(".pick")) b.classList.toggle("on", b.dataset.choice === state.choice);
    for (const card of document.querySelectorAll(".answer")) card.classList.toggle("chosen", card.dataset.label === state.choice);
    $("choice-btn").disabled = !state.choice;
  }

  function pick(choice) {
    if (!state.trial) return;
    state.choice = choice;
    showChoice();
  }

  function renderAnswers(answers) {
    const box = $("answers");
    box.className = "";
    box.replaceChildren();
    for (const a of answers) {
      const card = document.createElement("article");
      card.className = "answer";
      card.dataset.label = a.label;
      const h = document.createElement("h3");
      h.textContent = "Answer " + a.label;
      const content = document.createElement("div");
      content.className = "content";
      content.textContent = a.content;
      card.append(h, content);
      card.addEventListener("click", () => pick(a.label));
      box.appendChild(card);
    }
  }

  async function ask(event) {
    event.preventDefault();
    const prompt = $("eval-prompt").value.trim();
    if (!prompt || state.trial) return;
    $("eval-ask-btn").disabled = true;
    $("answers").className = "loading";
    $("answers").textContent = "Writing three answers…";
    status("");
    const resp = await fetch(runUrl("/trials"), {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ user: state.user, messages: [{ role: "user", content: prompt }] }),
    });
    if (!resp.ok) {
      status(await errorText(resp), true);
      resetTrial();
      return;
    }
    const trial = await resp.json();
    state.trial = trial.id;
    renderAnswers(trial.answers);
    $("choice-form").hidden = false;
    showChoice();
  }

  async function submitChoice(event) {
    event.preventDefault();
    if (!state.trial || !state.choice) return;
    $("choice-btn").disabled = true;
    const body = { choice: state.choice };
    const why = $("eval-rationale").value.trim();
    if (why) body.rationale = why;
    const resp = await fetch(runUrl("/trials/" + encodeURIComponent(state.trial) + "/choice"), {
      method: "POST", headers: headers(), body: JSON.stringify(body),
    });
    if (!resp.ok && resp.status !== 409) {
      status(await errorText(resp), true);
      $("choice-btn").disabled = false;
      return;
    }
    state.answered += 1;
    $("answered-count").textContent = String(state.answered);
    resetTrial();
    $("eval-prompt").value = "";
    status("Recorded. Next prompt?");
    $("eval-prompt").focus();
  }

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("user-token").value.trim(), $("evaluation-id").value.trim());
  });
  $("signout-btn").addEventListener("click", signOut);
  $("eval-prompt-form").addEventListener("submit", ask);
  $("choice-form").addEventListener("submit", submitChoice);
  for (const b of document.querySelectorAll(".pick")) b.addEventListener("click", () => pick(b.dataset.choice));

  const fromUrl = new URLSearchParams(location.search).get("evaluation");
  if (fromUrl) $("evaluation-id").value = fromUrl;
  const token = tokenFromUrl() || sessionStorage.getItem("persona.token");
  if (token) $("user-token").value = token;
  const run = fromUrl || sessionStorage.getItem("persona.eval.run");
  if (token && run) signIn(token, run);
})();
