// The report's sample browser: filter the shown samples, open one, see its response token by token.
(function () {
  const samples = JSON.parse(document.getElementById("samples-data").textContent);
  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const MAX_ROWS = 300;
  let opened = null;

  function fill(select, values) {
    for (const v of values) select.appendChild(el("option", v)).value = v;
  }
  fill($("f-run"), [...new Set(samples.map((s) => s.run))]);
  fill($("f-status"), [...new Set(samples.flatMap((s) => [s.finish, s.status]).filter(Boolean))].sort());
  if (new Set(samples.map((s) => s.run)).size < 2) $("f-run").parentElement.style.display = "none";

  function number(id) {
    const v = $(id).value;
    return v === "" ? null : Number(v);
  }

  function matches(s) {
    const run = $("f-run").value, status = $("f-status").value;
    const [s0, s1, r0, r1] = ["f-step-min", "f-step-max", "f-reward-min", "f-reward-max"].map(number);
    if (run && s.run !== run) return false;
    if (status && s.finish !== status && s.status !== status) return false;
    if (s0 !== null && s.step < s0) return false;
    if (s1 !== null && s.step > s1) return false;
    if ((r0 !== null || r1 !== null) && s.reward === null) return false;
    if (r0 !== null && s.reward < r0) return false;
    if (r1 !== null && s.reward > r1) return false;
    return true;
  }

  const fmt = (v, digits) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));

  function render() {
    const body = $("samples-rows");
    body.replaceChildren();
    const hits = samples.filter(matches);
    for (const s of hits.slice(0, MAX_ROWS)) {
      const tr = el("tr");
      for (const v of [s.run, s.step, fmt(s.reward, 3), fmt(s.advantage, 3), s.finish, s.status, s.version, s.length,
                       s.tokens.join("").slice(0, 80)]) {
        tr.appendChild(el("td", v));
      }
      tr.className = "sample-row" + (s === opened ? " opened" : "");
      tr.onclick = () => open(s);
      body.appendChild(tr);
    }
    $("samples-count").textContent = `${hits.length} of ${samples.length} samples match` +
      (hits.length > MAX_ROWS ? `; the first ${MAX_ROWS} are listed` : "");
  }

  // Per token: its version, from the sample's [[version, tokens], ...] spans.
  function tokenVersions(s) {
    if (!s.version_spans.length) return s.tokens.map(() => s.version);
    return s.version_spans.flatMap(([v, n]) => Array(n).fill(v));
  }

  function shade(s, i, mode, maxAdvantage) {
    if (s.loss_mask[i] === 0) return "";
    if (mode === "advantage") {
      const a = s.advantage || 0, alpha = Math.min(1, Math.abs(a) / maxAdvantage) * 0.6;
      return a >= 0 ? `rgba(0,160,80,${alpha})` : `rgba(220,40,40,${alpha})`;
    }
    const p = Math.exp(s.logprobs[i] ?? 0);  // the sampler's probability of the token it sampled
    return `rgba(240,120,0,${(1 - p) * 0.8})`;
  }

  function open(s) {
    opened = s;
    render();
    const box = $("sample-detail");
    box.replaceChildren();
    box.appendChild(el("h3", `${s.run} · step ${s.step} · sample ${s.id}`));
    const facts = el("p");
    facts.textContent = `reward ${fmt(s.reward, 4)} · advantage ${fmt(s.advantage, 4)} · finish ${s.finish} · ` +
      `status ${s.status || "-"} · policy version ${s.version} · ${s.length} response tokens`;
    box.appendChild(facts);
    if (s.version_spans.length) {
      box.appendChild(el("p", "version spans: " + s.version_spans.map(([v, n]) => `v${v} × ${n} tokens`).join(", ")));
    }
    if (s.error) box.appendChild(el("pre", "reward error: " + s.error, "error"));
    box.appendChild(el("h4", "prompt"));
    box.appendChild(el("pre", s.prompt, "prompt"));
    box.appendChild(el("h4", "response"));
    const mode = document.querySelector("input[name=shade]:checked").value;
    const maxAdvantage = Math.max(1e-9, ...samples.map((x) => Math.abs(x.advantage || 0)));
    const versions = tokenVersions(s);
    const response = el("div", null, "response");
    s.tokens.forEach((t, i) => {
      const span = el("span", t, s.loss_mask[i] === 0 ? "tok observation" : "tok");
      span.style.background = shade(s, i, mode, maxAdvantage);
      const lp = s.logprobs[i];
      span.title = `token ${i}: p=${fmt(Math.exp(lp), 3)} (log-prob ${fmt(lp, 3)}) · version ${versions[i]}` +
        (s.loss_mask[i] === 0 ? " · environment output, not trained" : "");
      response.appendChild(span);
    });
    box.appendChild(response);
    if (s.length > s.tokens.length) box.appendChild(el("p", `[${s.length - s.tokens.length} more tokens left out]`));
    const { tests, transcript, ...details } = s.details || {};
    if (Array.isArray(transcript) && transcript.length) {  // an agent episode: its turns and tool outputs
      box.appendChild(el("h4", `transcript (${transcript.length} messages)`));
      const turns = el("div", null, "transcript");
      for (const m of transcript) {
        const turn = el("div", null, `turn ${m.role}`);
        turn.appendChild(el("b", m.role === "tool" ? "tool output" : "model"));
        turn.appendChild(el("pre", m.text));
        turns.appendChild(turn);
      }
      box.appendChild(turns);
    }
    if (tests && typeof tests === "object" && Object.keys(tests).length) {
      box.appendChild(el("h4", "grade per test"));
      const table = el("table", null, "tests");
      for (const [name, outcome] of Object.entries(tests)) {
        const tr = el("tr");
        tr.appendChild(el("td", name));
        const text = typeof outcome === "object" ? JSON.stringify(outcome) : String(outcome);
        tr.appendChild(el("td", text, text === "passed" || text === "failed" ? text : ""));
        table.appendChild(tr);
      }
      box.appendChild(table);
    }
    if (Object.keys(details).length) {
      box.appendChild(el("h4", "reward details"));
      box.appendChild(el("pre", JSON.stringify(details, null, 2)));
    }
  }

  for (const id of ["f-run", "f-status", "f-step-min", "f-step-max", "f-reward-min", "f-reward-max"]) {
    $(id).addEventListener("input", render);
  }
  for (const radio of document.querySelectorAll("input[name=shade]")) {
    radio.addEventListener("change", () => opened && open(opened));
  }
  render();
  if (samples.length) open(samples[0]);
})();
