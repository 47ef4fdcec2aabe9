/* The dashboard of `nbdurable serve` (after the graph scripts: _nbdEl, nbdMountRunView... are in scope).
   Fetches the API with the token's cookie, follows /api/stream, draws with DOM nodes only (never innerHTML).
   DOM contract for tests: tr[data-run-id][data-status] rows, #nbd-run[data-run-id][data-status],
   li[data-approval-run] with button[data-decision], #nbd-dash[data-live], #nbd-dash[data-rendered-at]. */
(function () {
  "use strict";
  const doc = document;
  const $ = function (id) { return doc.getElementById(id); };
  const el = function (tag, attrs, children) { return _nbdEl(doc, tag, attrs || {}, children); };
  const state = { filters: {}, rows: [], selected: null, detail: null, view: null, timer: null };

  function api(method, path, body) {
    const init = { method: method, credentials: "same-origin", headers: {} };
    if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
    return fetch(path, init).then(function (resp) {
      return resp.text().then(function (text) {
        let data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
        if (!resp.ok) {
          const err = new Error((data && data.error) || ("HTTP " + resp.status));
          err.hint = data && data.hint; err.status = resp.status;
          throw err;
        }
        return data;
      });
    });
  }

  function say(text) { $("nbd-msg").textContent = text || ""; }
  function errorText(err) { return err.message + (err.hint ? " — " + err.hint : ""); }

  /* ----- runs table ------------------------------------------------------------------------------- */

  function query() {
    const params = new URLSearchParams();
    for (const key of Object.keys(state.filters)) if (state.filters[key]) params.set(key, state.filters[key]);
    params.set("limit", "200");
    return "/api/runs?" + params.toString();
  }

  function loadRuns() {
    return api("GET", query()).then(function (body) {
      state.rows = body.runs;
      $("nbd-filter-error").hidden = true;
      $("nbd-count").textContent = body.total > body.runs.length
        ? body.runs.length + " of " + body.total + " runs (newest first)" : _nbdPlural(body.total, "run");
      drawRuns();
    }).catch(function (err) {
      const box = $("nbd-filter-error");
      box.textContent = errorText(err);
      box.hidden = false;
    });
  }

  function startedBy(row) {  // what started the run, when no person did
    const text = row.schedule ? "schedule " + row.schedule : row.trigger ? "trigger " + row.trigger
      : row.parent_run ? "child of " + row.parent_run : "";
    return text ? el("div", { "class": "nbd-dash-sub" }, text) : null;
  }

  function runCells(row) {
    const steps = (row.steps_total || 0) + (row.steps_restored ? " (" + row.steps_restored + " restored)" : "");
    return [
      el("td", { title: row.run_id }, el("code", {}, row.run_id)),
      el("td", { title: row.notebook || "" }, [row.notebook_label || row.notebook || "(unnamed)", startedBy(row)]),
      el("td", {}, _nbdPill(doc, row.status)),
      el("td", {}, nbdFormatTime(row.started_at)),
      el("td", {}, row.duration_s === null || row.duration_s === undefined ? "" : nbdFormatDuration(row.duration_s)),
      el("td", {}, String(steps)),
    ];
  }

  function drawRuns() {
    const body = $("nbd-runs").tBodies[0];
    const rows = state.rows.map(function (row) {
      return el("tr", { "data-run-id": row.run_id, "data-status": row.status || "",
        "aria-selected": row.run_id === state.selected ? "true" : "false" }, runCells(row));
    });
    _nbdClear(body);
    for (const tr of rows) body.appendChild(tr);
    if (!rows.length) body.appendChild(el("tr", {}, el("td", { colspan: "6" }, "no runs match")));
    $("nbd-dash").setAttribute("data-rendered-at", String(performance.now()));
  }

  function mergeRows(changed) {
    let unseen = false, waits = false;
    for (const row of changed) {
      const before = state.rows.find(function (r) { return r.run_id === row.run_id; });
      waits = waits || row.status === "suspended" || (before && before.status === "suspended");
      const i = state.rows.findIndex(function (r) { return r.run_id === row.run_id; });
      if (i >= 0) state.rows[i] = row; else unseen = true;
      if (row.run_id === state.selected) loadRun(row.run_id);
    }
    if (unseen) loadRuns(); else drawRuns();
    if (waits || unseen) loadApprovals();  /* a run that began or ended waiting for an event */
  }

  /* ----- the selected run ------------------------------------------------------------------------- */

  function loadRun(runId) {
    return api("GET", "/api/runs/" + encodeURIComponent(runId)).then(function (body) {
      if (state.selected !== runId) return;
      state.detail = body;
      drawRun();
    }).catch(function (err) { say(errorText(err)); });
  }

  function drawRun() {
    const body = state.detail, run = body.run, box = $("nbd-run");
    box.hidden = false;
    box.setAttribute("data-run-id", run.run_id);
    box.setAttribute("data-status", run.status || "");
    const title = $("nbd-run-title");
    _nbdClear(title);
    title.appendChild(el("code", {}, run.run_id));
    title.appendChild(doc.createTextNode(" "));
    title.appendChild(_nbdPill(doc, run.status));
    const lineage = body.lineage || {};
    const meta = [run.notebook || "", run.params && Object.keys(run.params).length ? "params " + JSON.stringify(run.params) : "",
      lineage.resumed_from ? "resumes " + lineage.resumed_from : "",
      lineage.forked_from ? "forked from " + lineage.forked_from : "",
      lineage.origin && lineage.origin.schedule ? "schedule " + lineage.origin.schedule : "",
      lineage.origin && lineage.origin.trigger ? "trigger " + lineage.origin.trigger : "",
      lineage.origin && lineage.origin.parent_run ? "child of " + lineage.origin.parent_run : "",
      (lineage.resumed_by || []).length ? "resumed by " + lineage.resumed_by.join(", ") : "",
      run.status === "suspended" ? nbdDescribeWait(run) : ""].filter(Boolean);
    $("nbd-run-meta").textContent = meta.join(" · ");
    $("nbd-run-report").setAttribute("href", "/api/runs/" + encodeURIComponent(run.run_id) + "/report");
    const finished = run.status === "completed" || run.status === "cancelled";
    const live = run.status === "running" || run.status === "starting";
    for (const b of doc.querySelectorAll(".nbd-dash-actions button")) {
      const action = b.getAttribute("data-action");
      b.disabled = action === "cancel" ? finished : action === "resume" ? finished || live : live;
    }
    if (!state.view) state.view = nbdMountRunView($("nbd-run-view"), { layout: "stacked" });
    if (body.graph) state.view.update(body.graph);
  }

  function select(runId) {
    state.selected = runId;
    state.detail = null;
    drawRuns();
    loadRun(runId);
  }

  function act(action) {
    const runId = state.selected;
    if (!runId) return;
    say(action + " " + runId + "…");
    api("POST", "/api/runs/" + encodeURIComponent(runId) + "/" + action, {}).then(function (answer) {
      say(answer.message || (action + ": run " + answer.run_id + " " + answer.status));
      loadRuns();
      loadRun(runId);
    }).catch(function (err) { say(action + " failed: " + errorText(err)); });
  }

  /* ----- side panes ------------------------------------------------------------------------------- */

  function fillList(id, items, draw, empty) {
    const list = $(id);
    _nbdClear(list);
    if (!items.length) { list.appendChild(el("li", { "class": "nbd-empty" }, empty)); return; }
    for (const item of items) list.appendChild(draw(item));
  }

  function drawApproval(a) {
    const payload = el("input", { placeholder: "payload JSON (optional)", "aria-label": "payload" });
    const decide = function (approved) {
      let extra = {};
      try { extra = payload.value.trim() ? JSON.parse(payload.value) : {}; } catch (e) {
        say("the payload is not JSON: " + e.message); return;
      }
      api("POST", "/api/approvals/" + encodeURIComponent(a.event), { approved: approved, payload: extra, run_id: a.run_id })
        .then(function (answer) { say((approved ? "approved" : "rejected") + ": event " + answer.id + " sent"); loadSide(); })
        .catch(function (err) { say(errorText(err)); });
    };
    const yes = el("button", { type: "button", "data-decision": "approve" }, "Approve");
    const no = el("button", { type: "button", "data-decision": "reject" }, "Reject");
    yes.addEventListener("click", function () { decide(true); });
    no.addEventListener("click", function () { decide(false); });
    return el("li", { "data-approval-run": a.run_id, "data-event": a.event }, [
      el("div", { title: a.notebook || "" }, [el("code", {}, a.event), " · ", String(a.notebook || "").split("/").pop(),
        a.match ? " · " + JSON.stringify(a.match) : ""]),
      el("div", {}, el("code", {}, a.run_id)),
      el("div", { "class": "nbd-dash-row" }, [payload, yes, no]),
    ]);
  }

  function loadApprovals() {
    api("GET", "/api/approvals").then(function (b) {
      fillList("nbd-approvals", b.approvals, drawApproval, "no run waits for an approval");
    }).catch(function (err) { say(errorText(err)); });
  }

  function loadSide() {
    loadApprovals();
    api("GET", "/api/events?limit=20").then(function (b) {
      fillList("nbd-events", b.events, function (e) {
        return el("li", { "data-event-id": e.id }, [el("code", {}, e.name), " · ", nbdFormatTime(e.sent_at),
          el("div", {}, _nbdTrunc(JSON.stringify(e.data), 160))]);
      }, "no events yet");
    }).catch(function (err) { say(errorText(err)); });
    api("GET", "/api/schedules").then(function (b) {
      fillList("nbd-schedules", b.schedules, function (s) {
        const toggle = el("button", { type: "button", "data-schedule-action": s.paused ? "resume" : "pause" },
          s.paused ? "Resume" : "Pause");
        toggle.addEventListener("click", function () {
          api("POST", "/api/schedules/" + encodeURIComponent(s.name) + "/" + (s.paused ? "resume" : "pause"), {})
            .then(function () { loadSide(); }).catch(function (err) { say(errorText(err)); });
        });
        return el("li", { "data-schedule": s.name || "", "data-paused": s.paused ? "true" : "false" }, [
          el("code", {}, s.name || "?"), " · ", s.notebook || "",
          el("div", { "class": "nbd-dash-row" }, [(s.cron || "") + (s.paused ? " · paused" : " · next " +
            nbdFormatTime(s.next_fire_at)), toggle])]);
      }, "no schedules");
    }).catch(function (err) { say(errorText(err)); });
    api("GET", "/api/triggers").then(function (b) {
      fillList("nbd-triggers", b.triggers, function (t) {
        return el("li", { "data-trigger": t.name || "" }, [el("code", {}, t.event || "?"), " → ", t.notebook || "",
          t.match ? el("div", {}, JSON.stringify(t.match)) : ""]);
      }, "no triggers");
    }).catch(function (err) { say(errorText(err)); });
  }

  /* ----- live stream ------------------------------------------------------------------------------ */

  function connect() {
    const source = new EventSource("/api/stream");
    const live = function (on) {
      $("nbd-dash").setAttribute("data-live", on ? "on" : "off");
      $("nbd-live").textContent = on ? "● live" : "○ reconnecting";
    };
    source.addEventListener("hello", function () { live(true); });
    source.addEventListener("runs", function (m) { mergeRows(JSON.parse(m.data).runs); });
    source.addEventListener("events", function () { loadSide(); });
    source.addEventListener("resync", function () { loadRuns(); loadSide(); if (state.selected) loadRun(state.selected); });
    source.onerror = function () { live(false); };
  }

  /* ----- wiring ----------------------------------------------------------------------------------- */

  $("nbd-filters").addEventListener("input", function (event) {
    const field = event.target;
    if (!field.name) return;
    state.filters[field.name] = field.value.trim();
    clearTimeout(state.timer);
    state.timer = setTimeout(loadRuns, 250);
  });
  $("nbd-filters").addEventListener("submit", function (event) { event.preventDefault(); loadRuns(); });
  $("nbd-runs").addEventListener("click", function (event) {
    const tr = event.target.closest("tr[data-run-id]");
    if (tr) select(tr.getAttribute("data-run-id"));
  });
  for (const b of doc.querySelectorAll(".nbd-dash-actions button")) {
    b.addEventListener("click", function () { act(b.getAttribute("data-action")); });
  }
  loadRuns();
  loadSide();
  connect();
})();
