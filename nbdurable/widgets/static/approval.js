// The approval widget of a pending nbd.wait_for_event: Approve / Reject with an optional JSON payload.
// Clicks are sent to the kernel (model.send); the kernel sends the event and updates `state`/`message`.

function nbdApprovalText(model) {
  const match = model.get("match");
  const timeoutAt = model.get("timeout_at");
  const state = model.get("state");
  const ended = { received: "Received", timeout: "Timed out waiting for", interrupted: "Stopped waiting for" }[state];
  if (ended) return `${ended} event “${model.get("event")}”`;
  let text = `Waiting for event “${model.get("event")}”`;
  if (match && Object.keys(match).length) text += ` matching ${JSON.stringify(match)}`;
  if (timeoutAt) text += ` until ${new Date(timeoutAt * 1000).toLocaleString()}`;
  return text;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "nbd-approval";
  root.style.cssText = "border:1px solid var(--jp-border-color1,#ccc);border-left:4px solid #f2c94c;" +
    "padding:8px 10px;border-radius:4px;font:13px var(--jp-ui-font-family,sans-serif);max-width:640px;" +
    "color:var(--jp-ui-font-color1,#222);background:var(--jp-layout-color1,#fff)";
  const title = document.createElement("div");
  title.style.cssText = "font-weight:600;margin-bottom:6px";
  const payload = document.createElement("textarea");
  payload.className = "nbd-payload";
  payload.placeholder = 'optional JSON payload, e.g. {"comment": "looks good"}';
  payload.rows = 2;
  payload.style.cssText = "width:100%;box-sizing:border-box;font-family:var(--jp-code-font-family,monospace);margin-bottom:6px";
  const approve = document.createElement("button");
  approve.className = "nbd-approve";
  approve.textContent = "Approve";
  approve.style.cssText = "background:#27ae60;color:#fff;border:0;border-radius:3px;padding:4px 14px;margin-right:6px;cursor:pointer";
  const reject = document.createElement("button");
  reject.className = "nbd-reject";
  reject.textContent = "Reject";
  reject.style.cssText = "background:#eb5757;color:#fff;border:0;border-radius:3px;padding:4px 14px;cursor:pointer";
  const status = document.createElement("div");
  status.className = "nbd-approval-status";
  status.style.cssText = "margin-top:6px;color:var(--jp-ui-font-color2,#555)";
  root.append(title, payload, approve, reject, status);
  el.appendChild(root);

  const send = (action) => {
    model.send({ action, payload: payload.value });
    status.textContent = `${action === "approve" ? "Approving" : "Rejecting"}…`;
  };
  approve.addEventListener("click", () => send("approve"));
  reject.addEventListener("click", () => send("reject"));

  const update = () => {
    const state = model.get("state");
    root.dataset.event = model.get("event");
    root.dataset.state = state;
    title.textContent = nbdApprovalText(model);
    const open = state === "waiting" || state === "sent";
    approve.disabled = reject.disabled = payload.disabled = !open;
    for (const button of [approve, reject]) {
      button.style.opacity = open ? "1" : "0.45";
      button.style.cursor = open ? "pointer" : "default";
    }
    root.style.borderLeftColor = { received: "#27ae60", timeout: "#9b9b9b", interrupted: "#9b9b9b" }[state] || "#f2c94c";
    if (model.get("message")) status.textContent = model.get("message");
  };
  update();
  model.on("change:state", update);
  model.on("change:message", update);
  return () => {
    model.off("change:state", update);
    model.off("change:message", update);
  };
}

export default { render };
