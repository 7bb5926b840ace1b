// Omoi Console: render the snapshot, then stay current from the websocket feed.
(function () {
  "use strict";
  const MAX_EVENTS = 50;
  // A stopped worker publishes nothing: the console's own health is polled.
  const HEALTH_EVERY_MS = 2000;
  let state = JSON.parse(document.getElementById("snapshot").textContent);
  let refreshTimer = null;

  function cell(text, cls, href) {
    const td = document.createElement("td");
    const content = text == null ? "" : String(text);
    if (href) {
      const link = document.createElement("a");
      link.href = href;
      link.textContent = content;
      td.appendChild(link);
    } else {
      td.textContent = content;
    }
    if (cls) td.className = cls;
    return td;
  }

  // The agent's and the action's own pages: their log lines and traces.
  function agentPage(id) {
    return "/agents/" + encodeURIComponent(id);
  }

  function time(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "–";
  }

  function fill(tableId, rows, columns) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.id = row.id;
      columns.forEach(([value, cls, href]) =>
        tr.appendChild(cell(value(row), cls && cls(row), href && href(row))));
      return tr;
    }));
  }

  function render() {
    fill("alerts", state.alerts, [
      [(a) => a.severity, (a) => "sev-" + a.severity],
      [(a) => a.summary],
      [(a) => a.status],
      [(a) => time(a.started_at)],
      [(a) => (a.trace_id || "").slice(0, 12)],
    ]);
    fill("agents", state.agents, [
      [(a) => a.id, null, (a) => agentPage(a.id)],
      [(a) => a.role],
      [(a) => a.state, (a) => "state-" + a.state],
      [(a) => time(a.last_heartbeat_at)],
      [(a) => a.current_task],
    ]);
    fill("actions", state.actions, [
      [(a) => a.agent, null, (a) => agentPage(a.agent)],
      [(a) => a.step, null, (a) => "/actions/" + a.id],
      [(a) => a.status],
      [(a) => time(a.started_at)],
      [(a) => a.outcome],
    ]);
    renderHealth(state.health);
    const banner = document.getElementById("watchdog-banner");
    const warnings = (state.watchdog && state.watchdog.warnings) || [];
    banner.replaceChildren(...warnings.map((text) => {
      const p = document.createElement("p");
      p.textContent = text;
      return p;
    }));
    banner.hidden = warnings.length === 0;
    document.getElementById("alert-count").textContent = state.alerts.length;
    document.getElementById("agent-count").textContent = state.agents.length;
    const awaiting = document.getElementById("approval-count");
    awaiting.textContent = state.awaiting_approval + " awaiting approval";
    awaiting.hidden = !state.awaiting_approval;
    const list = document.getElementById("events");
    list.replaceChildren(...state.events.slice(0, MAX_EVENTS).map((e) => {
      const li = document.createElement("li");
      li.dataset.id = e.id;
      li.dataset.name = e.name;
      li.textContent = time(e.occurred_at) + "  " + e.name + "  " + (e.payload.agent_id || e.payload.alert_id || "");
      return li;
    }));
  }

  // Events say what changed; the snapshot says what is. Refetch, debounced.
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      let response;
      try {
        response = await fetch("/console/state", { credentials: "same-origin" });
      } catch (error) {
        return; // server unreachable: the socket's reconnect loop brings us back
      }
      // Redirected means the session ended (to the login page): not a snapshot.
      if (response.ok && !response.redirected) {
        const events = state.events;
        state = await response.json();
        state.events = mergeEvents(events, state.events);
        render();
      }
    }, 250);
  }

  // Keyed by id: delivery is at least once, so the same event may arrive twice.
  function mergeEvents(a, b) {
    const seen = new Map();
    [...a, ...b].forEach((e) => seen.set(e.id, e));
    return [...seen.values()].sort((x, y) => (x.occurred_at < y.occurred_at ? 1 : -1)).slice(0, MAX_EVENTS);
  }

  function connect(delay) {
    const live = document.getElementById("live");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws/console/");
    socket.onopen = () => {
      live.dataset.state = "open";
      live.textContent = "live";
      delay = 1000;
      scheduleRefresh();
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      const events = data.type === "event" ? [data.event] : data.type === "events" ? data.events : null;
      if (events) {
        state.events = mergeEvents(state.events, events);
        render();
        scheduleRefresh();
      }
    };
    socket.onclose = (close) => {
      live.dataset.state = "closed";
      if (close.code === 4401 || close.code === 4403) {
        live.textContent = "not allowed: log in again";
        return;
      }
      live.textContent = "reconnecting…";
      setTimeout(() => connect(Math.min(delay * 2, 15000)), delay);
    };
  }

  // {"status": "error", "worker": "stale 14s", "database": "ok"} -> "Console degraded: worker stale 14s"
  function renderHealth(health) {
    const banner = document.getElementById("health");
    const down = Object.entries(health || {}).filter(([name, value]) => name !== "status" && value !== "ok");
    banner.hidden = health == null || health.status === "ok";
    banner.textContent = health == null ? "" : "Console degraded: " +
      (down.length ? down.map(([name, value]) => name + " " + value).join(", ") : "unknown");
  }

  async function pollHealth() {
    let health;
    try {
      const response = await fetch("/healthz", { cache: "no-store" });
      health = await response.json();
    } catch (error) {
      health = { status: "error", console: "unreachable" };
    }
    state.health = health;
    renderHealth(health);
  }

  render();
  setInterval(pollHealth, HEALTH_EVERY_MS);
  connect(1000);
})();
