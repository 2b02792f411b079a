// difflens explore: chat side by side (streamed through /v1/chat/completions), heat maps of any text
// (/api/heatmap), and the run's views (HTML fragments rendered by the report's own code).
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };
  const num = (x) => String(+Number(x).toPrecision(4));  // 40, 0.125 (no trailing zeros)
  const fmt = (x, d) => (x === null || x === undefined || Number.isNaN(x)) ? "—" : Number(x).toPrecision(d || 4);
  const WS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"};
  const showTok = (t) => t === "" ? "∅" : Array.from(t).map((c) => WS[c] || c).join("");

  let INFO = null;
  const turns = [];  // [{user: text, answers: {colKey: text}}]
  const columns = [];

  // ------------------------------------------------------------------ tabs and fragments
  const loaded = {};
  function showTab(name) {
    $$(".tabs button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
    $$(".view").forEach((v) => v.classList.toggle("on", v.id === "view-" + name));
    const view = $("#view-" + name);
    if (view.dataset.fragment && !loaded[name]) { loaded[name] = true; loadFragment(view, ""); }
  }
  async function loadFragment(view, query) {
    const r = await fetch("/fragments/" + view.dataset.fragment + (query ? "?" + query : ""));
    view.innerHTML = r.ok ? await r.text() : '<div class="error">could not load this view (' + r.status + ")</div>";
    view.dataset.loaded = "1";
  }
  $$(".tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  const examples = $("#view-examples");
  function examplesQuery(page) {
    const ctl = $(".examplesctl", examples);
    const q = new URLSearchParams();
    q.set("stat", $("select[name=stat]", ctl).value);
    q.set("control", $("select[name=control]", ctl).value);
    q.set("page", String(page));
    return q.toString();
  }
  examples.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-examples-page]");
    if (b && !b.disabled) loadFragment(examples, examplesQuery(b.dataset.examplesPage));
  });
  examples.addEventListener("change", (ev) => {
    if (ev.target.matches("select")) loadFragment(examples, examplesQuery(0));
  });

  const patchscope = $("#view-patchscope");
  patchscope.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-scales]");
    if (!b) return;
    const open = b.dataset.scales === "open";
    patchscope.classList.toggle("allscales", open);
    $$("details.scales", patchscope).forEach((d) => { d.open = open; });
  });

  // ------------------------------------------------------------------ chat
  function note(text) {
    const d = el("div", {class: "note empty small"});
    const parts = String(text).split("`");
    parts.forEach((p, i) => d.append(i % 2 ? el("code", {text: p}) : document.createTextNode(p)));
    return d;
  }
  function knob(label, min, max, step, value, onchange) {
    const input = el("input", {type: "range", min: String(min), max: String(max), step: String(step), value: String(value)});
    const val = el("span", {class: "val", text: fmt(value, 3)});
    input.addEventListener("input", () => { val.textContent = fmt(+input.value, 3); });
    input.addEventListener("change", () => onchange(+input.value));
    return {row: el("div", {class: "knob"}, el("span", {text: label}), input, val), input, val};
  }

  function buildColumns() {
    const box = $("#columns");
    box.innerHTML = "";
    columns.length = 0;
    const add = (key, title, kind, model, extra) => {
      const c = {key, title, kind, model, enabled: true, thread: el("div", {class: "thread"}), ...extra};
      c.head = el("div", {class: "colhead"}, el("div", {class: "colname"}, title, el("span", {class: "kind", text: kind})));
      c.node = el("div", {class: "col " + key, "data-model": key}, c.head, c.thread);
      box.append(c.node);
      columns.push(c);
      return c;
    };
    add("base", "base", INFO.base, () => "base");
    add("finetuned", "finetuned", INFO.finetuned, () => "finetuned");
    const st = add("steered", "steered", "δ̄_j · layer " + INFO.layer, null);
    if (INFO.steering.length) {
      const alphas = INFO.steering.map((s) => s.alpha);
      const top = Math.max(1, ...alphas) * 2;
      const sel = el("select", {class: "position"});
      INFO.steering.forEach((s) => sel.append(el("option", {value: String(s.position), text: "j = " + s.position})));
      st.position = () => +sel.value;
      st.threshold = () => INFO.steering.find((s) => s.position === st.position()).alpha;
      const k = knob("α", 0, top.toFixed(2), (top / 200).toFixed(4), st.threshold(), () => regenerate(st));
      st.alpha = () => +k.input.value;
      sel.addEventListener("change", () => { k.input.value = String(st.threshold()); k.val.textContent = fmt(st.threshold(), 3); regenerate(st); });
      st.model = () => "steered-p" + st.position();
      const thr = el("span", {class: "muted small thr"});
      const showThr = () => { thr.textContent = "threshold α = " + fmt(st.threshold(), 3); };
      showThr(); sel.addEventListener("change", showThr);
      st.head.append(el("div", {class: "knob"}, el("span", {text: "position"}), sel, thr), k.row);
      st.slider = k.input;
    } else {
      st.enabled = false;
      st.head.append(note(INFO.notes.steer || "no steering yet"));
    }
    const amp = add("amplified", "amplified", "l_ft + β(l_ft − l_base)", () => "amplified");
    const bmax = Math.max(8, 2 * INFO.beta);
    const kb = knob("β", 0, bmax, bmax / 64, INFO.beta, () => regenerate(amp));
    amp.beta = () => +kb.input.value;
    amp.head.append(kb.row);
    amp.slider = kb.input;
    if (INFO.notes.amplify) amp.head.append(note(INFO.notes.amplify));
  }

  function settings() {
    return {temperature: +$("#temperature").value, seed: +$("#seed").value, max_tokens: +$("#max-tokens").value};
  }

  function messagesFor(col, upto) {
    const msgs = [];
    for (let i = 0; i <= upto; i++) {
      msgs.push({role: "user", content: turns[i].user});
      if (i < upto) msgs.push({role: "assistant", content: turns[i].answers[col.key] || ""});
    }
    return msgs;
  }

  function turnNode(col, i) {
    let node = col.thread.children[i];
    if (!node) {
      node = el("div", {class: "turn", "data-turn": String(i)}, el("div", {class: "user", text: turns[i].user}),
        el("div", {class: "answer"}), el("div", {class: "meta"}));
      col.thread.append(node);
    }
    return node;
  }

  async function ask(col, i) {
    if (!col.enabled) return;
    const node = turnNode(col, i);
    const ans = $(".answer", node), meta = $(".meta", node);
    ans.textContent = ""; meta.textContent = ""; ans.className = "answer waiting";
    ans.removeAttribute("data-done");
    const old = $(".err", node); if (old) old.remove();
    const s = settings();
    const body = {model: col.model(), messages: messagesFor(col, i), stream: true, temperature: s.temperature,
      seed: s.seed, max_tokens: s.max_tokens};
    if (col.alpha) body.alpha = col.alpha();
    if (col.beta) body.beta = col.beta();
    const gen = (col.gen || 0) + 1; col.gen = gen;  // a newer request for this column supersedes this one
    let text = "";
    const t0 = performance.now();
    let first = null;
    try {
      let r;
      for (let attempt = 0; ; attempt++) {
        r = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify(body)});
        if (r.status !== 429 || attempt >= 5) break;
        const wait = +(r.headers.get("Retry-After") || "1");
        ans.className = "answer waiting"; meta.textContent = "queue full, retrying in " + wait + " s";
        await new Promise((res) => setTimeout(res, wait * 1000));
      }
      if (!r.ok) {
        let msg = r.status + "";
        try { msg += ": " + (await r.json()).error.message; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const obj = JSON.parse(data);
            if (gen !== col.gen) { reader.cancel(); return; }
            if (obj.error) throw new Error(obj.error.message);
            const ch = obj.choices && obj.choices[0];
            if (ch && ch.delta && ch.delta.content) {
              if (first === null) { first = (performance.now() - t0) / 1000; ans.className = "answer streaming"; }
              text += ch.delta.content;
              ans.textContent = text;
            }
            if (ch && ch.finish_reason) {
              const m = obj.difflens || {};
              const bits = ["seed " + m.seed, "T " + m.temperature];
              if (m.alpha !== undefined) bits.push("α " + num(m.alpha) + " at j = " + m.position);
              if (m.beta !== undefined) bits.push("β " + num(m.beta));
              bits.push(m.completion_tokens + " tokens", "first token " + fmt(first === null ? m.first_token_s : first, 2) + " s",
                ch.finish_reason);
              if (m.backend === "vllm") bits.push("vLLM");
              meta.textContent = bits.join(" · ");
            }
          }
        }
      }
    } catch (e) {
      node.append(el("div", {class: "err", text: "error: " + e.message}));
    } finally {
      if (gen === col.gen) {
        ans.className = "answer";
        ans.setAttribute("data-done", "1");
        turns[i].answers[col.key] = text;
      }
    }
  }

  function regenerate(col) {
    if (!turns.length) return;
    ask(col, turns.length - 1);
  }

  async function send() {
    const p = $("#prompt").value.trim();
    if (!p) return;
    $("#prompt").value = "";
    turns.push({user: p, answers: {}});
    const i = turns.length - 1;
    $("#chat-status").textContent = "";
    await Promise.all(columns.map((c) => ask(c, i)));
  }

  $("#send").addEventListener("click", send);
  $("#prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); send(); }
  });
  $("#reset").addEventListener("click", () => { turns.length = 0; columns.forEach((c) => { c.thread.innerHTML = ""; c.gen = (c.gen || 0) + 1; }); });

  // ------------------------------------------------------------------ heat maps
  let HEAT = null, PICK = null;
  const LABEL = {kl: "KL (nats)", norm: "‖h_ft − h_base‖", logit_diff: "l_ft − l_base of the next token",
    cos: "1 − cos", ent: "H(P_ft) (nats)"};
  // [background, its opacity]: the report's ramp (opacity ∝ √(v / max)), diverging for the logit difference
  function colour(stat, v, vmax) {
    if (v === null || v === undefined || !(vmax > 0)) return ["transparent", 0];
    if (stat === "logit_diff") {
      const a = Math.min(1, Math.abs(v) / vmax) ** 0.5 * 0.85;
      return [v >= 0 ? `rgba(37,99,235,${a.toFixed(3)})` : `rgba(194,38,38,${a.toFixed(3)})`, a];
    }
    const a = v > 0 ? Math.min(1, v / vmax) ** 0.5 * 0.85 : 0;
    return [`rgba(194,65,12,${a.toFixed(3)})`, a];
  }
  function scaleOf(stat) {
    const vals = HEAT.stats[stat].slice(1).filter((x) => x !== null && Number.isFinite(x));
    return Math.max(1e-12, ...vals.map((x) => stat === "logit_diff" ? Math.abs(x) : x));
  }
  function paintHeat() {
    const stat = $("#stat").value;
    const vmax = scaleOf(stat);
    $$(".tk", $("#heat")).forEach((s) => {
      const v = HEAT.stats[stat][+s.dataset.i];
      const [bg, a] = colour(stat, v, vmax);
      s.style.background = bg;
      s.style.color = a > 0.6 ? "#fff" : "";
      s.setAttribute("data-alpha", a.toFixed(3));
    });
    const ramp = stat === "logit_diff" ? "linear-gradient(90deg,rgba(194,38,38,.85),#fff,rgba(37,99,235,.85))"
      : "linear-gradient(90deg,#fff,rgba(194,65,12,.85))";
    const lo = stat === "logit_diff" ? "−" + fmt(vmax, 3) : "0";
    $("#heat-legend").innerHTML = "";
    $("#heat-legend").append(el("span", {text: LABEL[stat]}), el("span", {text: lo}),
      el("span", {class: "ramp", style: "background:" + ramp}), el("span", {text: fmt(vmax, 3)}),
      el("span", {class: "muted", text: HEAT.n_tokens + " tokens · layer " + HEAT.layer + " · " + fmt(HEAT.seconds, 3) + " s" +
        (HEAT.truncated ? " · truncated" : "")}));
  }
  function tokInfo(i) {
    const box = $("#tokinfo");
    box.innerHTML = "";
    const st = HEAT.stats;
    box.append(el("div", {}, el("b", {text: "token " + i + ": "}), el("code", {text: showTok(HEAT.tokens[i])})));
    const t = el("table", {class: "compact"});
    for (const k of ["kl", "norm", "cos", "ent", "logit_diff"]) {
      t.append(el("tr", {}, el("th", {text: LABEL[k]}), el("td", {class: "num", text: fmt(st[k][i], 4)})));
    }
    box.append(t);
    if (HEAT.next[i] !== null) {
      const p = HEAT.p_next[i];
      box.append(el("div", {class: "small"}, "next token ", el("code", {text: showTok(HEAT.next[i])}),
        ": p_ft " + fmt(p.p_ft, 3) + ", p_base " + fmt(p.p_base, 3)));
    }
    const list = (title, rows, cls) => {
      const tb = el("table", {class: "compact"}, el("tr", {}, el("th", {text: title}), el("th", {text: "p_ft − p_base"}),
        el("th", {text: "p_ft"}), el("th", {text: "p_base"})));
      rows.forEach((r) => tb.append(el("tr", {}, el("td", {}, el("code", {class: cls, text: showTok(r.token)})),
        el("td", {class: "num " + cls, text: (r.dp >= 0 ? "+" : "") + fmt(r.dp, 3)}), el("td", {class: "num", text: fmt(r.p_ft, 3)}),
        el("td", {class: "num", text: fmt(r.p_base, 3)}))));
      return tb;
    };
    box.append(el("h5", {text: "raised most by the finetune"}), list("token", HEAT.raised[i], "up"),
      el("h5", {text: "lowered most"}), list("token", HEAT.lowered[i], "down"));
  }
  function renderHeat() {
    const box = $("#heat");
    box.innerHTML = "";
    HEAT.tokens.forEach((tok, i) => {
      const s = el("span", {class: "tk", "data-i": String(i)});
      for (const k of ["kl", "norm", "cos", "ent", "logit_diff"]) {
        const v = HEAT.stats[k][i];
        s.setAttribute("data-" + k.replace("_", "-"), v === null ? "" : String(v));
      }
      s.title = showTok(tok) + " · KL " + fmt(HEAT.stats.kl[i], 3) + " · ‖Δh‖ " + fmt(HEAT.stats.norm[i], 3);
      for (const ch of tok) {
        if (ch === "\n") { s.append(el("span", {class: "ws", text: "↵"}), "\n"); }
        else s.append(ch);
      }
      if (tok === "") s.append(el("span", {class: "ws", text: "∅"}));
      s.addEventListener("mouseenter", () => { if (PICK === null) tokInfo(i); });
      s.addEventListener("click", () => {
        $$(".tk.pick", box).forEach((x) => x.classList.remove("pick"));
        if (PICK === i) { PICK = null; return; }
        PICK = i; s.classList.add("pick"); tokInfo(i);
      });
      box.append(s);
    });
    box.setAttribute("data-ready", "1");
    paintHeat();
  }
  async function heat() {
    const text = $("#text").value;
    if (!text.trim()) return;
    $("#heat-status").textContent = "computing…";
    $("#heat").removeAttribute("data-ready");
    PICK = null;
    const r = await fetch("/api/heatmap", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text})});
    if (!r.ok) {
      let msg = String(r.status);
      try { msg += ": " + (await r.json()).error.message; } catch (e) { /* not JSON */ }
      $("#heat-status").textContent = "error " + msg;
      return;
    }
    HEAT = await r.json();
    $("#heat-status").textContent = "";
    renderHeat();
  }
  $("#heat-go").addEventListener("click", heat);
  $("#stat").addEventListener("change", () => { if (HEAT) paintHeat(); });

  // ------------------------------------------------------------------ start
  fetch("/api/info").then((r) => r.json()).then((info) => {
    INFO = info;
    $("#max-tokens").value = String(info.defaults.max_tokens);
    $("#temperature").value = String(info.defaults.temperature);
    $("#seed").value = String(info.defaults.seed);
    buildColumns();
    document.body.setAttribute("data-ready", "1");
  });
})();
