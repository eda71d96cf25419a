// The lanvault dashboard: asks /api/overview every two seconds and draws it; browses a
// snapshot through /api/ls and downloads through /download. Everything from the catalog
// is written with textContent, never as markup.
"use strict";

const EVERY_MS = 2000;
let browsing = null; // {snapshot, root, path, title}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.appendChild(cell);
      tr.appendChild(td);
    } else if (Array.isArray(cell)) {
      tr.appendChild(el("td", cell[0], cell[1]));
    } else {
      tr.appendChild(el("td", cell));
    }
  }
  return tr;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB", "PB"];
  let value = n / 1000;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

function when(seconds) {
  if (!seconds) return "never";
  return new Date(seconds * 1000).toLocaleString();
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

function nodeState(node) {
  if (node.self) return ["this node", "self"];
  if (node.gone) return ["gone", "gone"];
  return node.up ? ["up", "up"] : ["down", "down"];
}

function drawNodes(status) {
  fill("nodes", status.nodes.map((node) => {
    const [text, cls] = nodeState(node);
    const tr = row([
      node.id, node.computer || "–", node.address, [text, `state ${cls}`],
      [bytes(node.capacity_bytes), "num"], [bytes(node.used_bytes), "num"],
      [bytes(node.free_bytes) + (node.disk_full ? " (disk full)" : ""), "num"],
    ]);
    tr.dataset.nodeId = node.id;
    tr.dataset.state = cls;
    return tr;
  }));
}

function drawHealth(status) {
  const facts = [];
  const own = status.own_chunks_below_degree;
  facts.push(["Own chunks below degree", own === null || own === undefined
    ? "counting…" : `${own} (counted ${ago(status.own_degrees_counted_ago)})`, "own-below",
    own ? "bad" : ""]);
  facts.push(["Chunks held for others below degree", status.held_chunks_below_degree,
    "held-below", status.held_chunks_below_degree ? "bad" : ""]);
  const repair = status.last_repair || {};
  facts.push(["Last repair pass", `${repair.checked || 0} checked, ${repair.below_degree || 0}`
    + ` below degree, ${plural(repair.copies_made || 0, "copy", "copies")} made`
    + (repair.failed ? `, ${repair.failed} failed` : ""), "repair", repair.failed ? "bad" : ""]);
  let pending = `${status.pending_backlog}`;
  if (status.pending_cannot_complete) pending += ` — ${status.pending_cannot_complete}`;
  facts.push(["Versions waiting for their copies", pending, "pending",
    status.pending_cannot_complete ? "bad" : ""]);
  const damage = status.bad_copies_found || {};
  facts.push(["Bad copies found and dropped", damage.total || 0, "bad-copies"]);
  const recovery = status.recovery || {};
  const behind = recovery.catalog_behind_seconds;
  facts.push(["Catalog copy on the peers", `${plural(recovery.catalog_holders || 0, "holder")}`
    + (behind ? `, ${Math.round(behind)} s behind` : ", up to date"), "catalog",
    behind ? "bad" : ""]);
  facts.push(["Recovery kit", recovery.kit ? `on ${plural(recovery.kit_holders || 0, "peer")}`
    : "none", "kit"]);
  const dl = document.getElementById("health");
  const items = [];
  for (const [name, value, id, cls] of facts) {
    items.push(el("dt", name));
    const dd = el("dd", value, cls);
    dd.id = `health-${id}`;
    items.push(dd);
  }
  dl.replaceChildren(...items);
}

function drawRunning(running) {
  const box = document.getElementById("running");
  if (!running.length) {
    box.replaceChildren(el("p", "nothing", "muted"));
    return;
  }
  box.replaceChildren(...running.map((job) => {
    const div = el("div", null, "activity");
    div.dataset.kind = job.kind;
    div.appendChild(el("strong", `${job.kind} `));
    div.appendChild(el("span", `${job.what} `));
    const bar = document.createElement("progress");
    if (job.bytes_total) { bar.max = job.bytes_total; bar.value = job.bytes_done; }
    div.appendChild(bar);
    const total = job.files_total ? ` of ${job.files_total}` : "";
    div.appendChild(el("span", ` ${job.files_done}${total} ${job.unit}, ${bytes(job.bytes_done)}`
      + (job.bytes_total ? ` of ${bytes(job.bytes_total)}` : "")
      + `, ${Math.round(job.elapsed)} s`, "muted"));
    return div;
  }));
}

function browseButton(snap) {
  const button = el("button", "browse", "link");
  button.addEventListener("click", () => {
    browsing = { snapshot: snap.id, root: snap.path, title: `${snap.path} at ${when(snap.time)}` };
    browse(snap.path);
  });
  return button;
}

function snapKind(snap) {
  if (snap.kind === "mount") return "mount";
  return snap.outcome && snap.outcome !== "complete" ? `backup (${snap.outcome})` : "backup";
}

function drawSnapshots(data) {
  fill("trees", data.trees.map((snap) => row([
    snap.path, when(snap.time), snapKind(snap), [snap.entries ?? "", "num"],
    [snap.bytes_added === undefined ? "" : bytes(snap.bytes_added), "num"], browseButton(snap),
  ])));
  fill("snapshots", data.snapshots.map((snap) => {
    const tr = row([
      when(snap.time), snapKind(snap), snap.path, [snap.entries ?? "", "num"],
      [snap.new ?? "", "num"], [snap.changed ?? "", "num"], [snap.removed ?? "", "num"],
      [snap.bytes_added === undefined ? "" : bytes(snap.bytes_added), "num"], browseButton(snap),
    ]);
    tr.dataset.snapshot = snap.id;
    return tr;
  }));
  const shown = data.snapshots.length;
  document.getElementById("snapshots-count").textContent =
    shown < data.snapshots_total ? `(newest ${shown} of ${data.snapshots_total})`
      : `(${data.snapshots_total})`;
}

function query(params) {
  return new URLSearchParams(params).toString();
}

async function browse(path) {
  browsing.path = path;
  const section = document.getElementById("browser");
  section.hidden = false;
  document.getElementById("browse-title").textContent = browsing.title;
  const download = document.getElementById("download-folder");
  download.href = `/download?${query({ snapshot: browsing.snapshot, path })}`;
  const crumbs = [];
  const inside = path.slice(browsing.root.length).split("/").filter((p) => p);
  let at = browsing.root;
  const top = el("button", browsing.root, "link");
  top.addEventListener("click", () => browse(browsing.root));
  crumbs.push(top);
  for (const part of inside) {
    at = `${at}/${part}`;
    const target = at;
    crumbs.push(el("span", " / "));
    const button = el("button", part, "link");
    button.addEventListener("click", () => browse(target));
    crumbs.push(button);
  }
  document.getElementById("crumbs").replaceChildren(...crumbs);
  const error = document.getElementById("browse-error");
  const answer = await fetch(`/api/ls?${query({ snapshot: browsing.snapshot, path })}`);
  if (!answer.ok) {
    error.textContent = await answer.text();
    error.hidden = false;
    fill("entries", []);
    return;
  }
  error.hidden = true;
  const listing = await answer.json();
  fill("entries", listing.entries.map((entry) => {
    let name = el("span", entry.name);
    if (entry.kind === "folder") {
      name = el("button", `${entry.name}/`, "link");
      name.addEventListener("click", () => browse(entry.path));
    }
    const link = el("a", entry.kind === "folder" ? "download .tar" : "download");
    link.href = `/download?${query({ snapshot: browsing.snapshot, path: entry.path })}`;
    link.setAttribute("download", "");
    const tr = row([name, entry.kind, [entry.kind === "file" ? bytes(entry.size) : "", "num"],
      when(entry.mtime), link]);
    tr.dataset.path = entry.path;
    return tr;
  }));
  section.scrollIntoView();
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const answer = await fetch("/api/overview");
    if (!answer.ok) throw new Error(`${answer.status} ${await answer.text()}`);
    const data = await answer.json();
    const status = data.status;
    document.getElementById("whoami").textContent =
      `node ${status.node_id} · network ${status.network_id}`;
    drawNodes(status);
    drawHealth(status);
    drawRunning(data.running);
    drawSnapshots(data);
    updated.textContent = `updated ${new Date(data.time * 1000).toLocaleTimeString()}`;
    updated.className = "muted";
    document.body.dataset.updated = String(data.time);
  } catch (err) {
    updated.textContent = `cannot reach the node: ${err.message}`;
    updated.className = "error";
  }
  setTimeout(refresh, EVERY_MS);
}

refresh();
