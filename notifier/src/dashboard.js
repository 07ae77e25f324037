// The live dashboard (served by the notifier at /; see docs/dashboard.md).
//
// 1. A token comes from the password field, from /#token=<jwt> (then removed from the address
//    bar) or from this tab's earlier visit (sessionStorage).
// 2. The WebSocket (/ws) tells who the token belongs to ("welcome") and then streams events.
// 3. On every (re)connection the figures are loaded: the gateway's GET /reports/summary (cards,
//    top products) at GATEWAY_PUBLIC_URL, and this notifier's GET /decisions (the chart).
// 4. Each event updates the page at once (cards, chart, feed, stock) and, for order events,
//    asks for the reports again shortly after (one request per burst, never on a timer), so the
//    figures always end up as the reports say.
"use strict";

const CONFIG = JSON.parse(document.getElementById("config").textContent);
const GATEWAY = CONFIG.gatewayUrl;
const STATUSES = ["PENDING", "CONFIRMED", "REJECTED", "CANCELLED"];
const DECISIONS = { "order.confirmed": "CONFIRMED", "order.rejected": "REJECTED", "order.cancelled": "CANCELLED" };
const OUTCOME_WORDS = { "order.created": "placed", "order.confirmed": "confirmed", "order.rejected": "rejected", "order.cancelled": "cancelled" };
/** A product with at most this many units left is "running low". */
const LOW_STOCK = 5;
const MINUTES = 60;
const FEED_LIMIT = 200;
/** How long after the last order event the reports are read again. */
const REFRESH_DELAY_MS = 700;

const el = (id) => document.getElementById(id);
const tokenField = el("token");
const statusBadge = el("status");
const feed = el("feed");
const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const integer = new Intl.NumberFormat("en-US");

const state = {
  token: "",
  identity: null,
  /** Orders per status, units and revenue as last known (null until the reports answered). */
  counts: null,
  units: null,
  revenue: null,
  top: [],
  /** Unix minute → {CONFIRMED, REJECTED, CANCELLED}. */
  minutes: new Map(),
  /** Product id → {name, price, stock, sellerId}; filled from the gateway, reports and events. */
  products: new Map(),
  lookups: new Map(),
  refreshTimer: null,
  loadedOnce: false,
};

let socket = null;
let retryDelay = 500;
let retryTimer = null;

// ---- small helpers --------------------------------------------------------------------------

function setStatus(text) {
  statusBadge.textContent = text;
  statusBadge.className = text;
}

function notice(text) {
  const box = el("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

/** "01a2…5d9c11": ids are UUID v7, whose first characters are a timestamp shared by orders of
 *  the same moment, so the end (random) is kept too. The full id is in the line's tooltip. */
function shortId(id) {
  return id && id.length > 12 ? id.slice(0, 4) + "…" + id.slice(-6) : id || "?";
}

/** "1 order", "3 orders". */
function count(n, noun) {
  return integer.format(n) + " " + noun + (n === 1 ? "" : "s");
}

function clock(date) {
  return date.toLocaleTimeString("en-GB", { hour12: false });
}

function productName(id) {
  const known = state.products.get(id);
  return known && known.name ? known.name : "product " + shortId(id);
}

function rememberProduct(id, fields) {
  const known = state.products.get(id) || {};
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null) known[key] = value;
  }
  state.products.set(id, known);
}

/** The product as the gateway has it (public GET /products/{id}), once per page. */
function lookupProduct(id) {
  if (!id) return Promise.resolve(null);
  if (!state.lookups.has(id)) {
    const request = fetch(GATEWAY + "/products/" + encodeURIComponent(id))
      .then((r) => (r.ok ? r.json() : null))
      .then((p) => {
        if (p) {
          rememberProduct(id, { name: p.name, price: p.price, sellerId: p.sellerId });
          // An event may have told a newer stock already; the lookup only fills a gap.
          if (state.products.get(id).stock === undefined) rememberProduct(id, { stock: p.stock });
          renderLow();
          renderTop();
        }
        return p;
      })
      .catch(() => null);
    state.lookups.set(id, request);
  }
  return state.lookups.get(id);
}

async function authorized(url) {
  const response = await fetch(url, { headers: { Authorization: "Bearer " + state.token } });
  if (!response.ok) {
    let detail = response.status + " " + response.statusText;
    try {
      const problem = await response.json();
      if (problem.detail) detail = problem.detail;
    } catch (e) { /* not a problem document */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// ---- loading from the reports ---------------------------------------------------------------

async function loadSummary() {
  const summary = await authorized(GATEWAY + "/reports/summary");
  state.counts = {};
  for (const status of STATUSES) state.counts[status] = Number(summary.orders[status] || 0);
  state.units = Number(summary.unitsConfirmed || 0);
  state.revenue = Number(summary.revenueConfirmed || 0);
  state.top = summary.topProducts || [];
  for (const p of state.top) {
    if (p.name) rememberProduct(p.productId, { name: p.name });
    lookupProduct(p.productId);
  }
  el("period").textContent = "All time, as the reports said at " + clock(new Date()) + "; live since.";
  renderCards();
  renderTop();
  return summary;
}

async function loadDecisions() {
  const answer = await authorized("/decisions");
  state.minutes = new Map();
  for (const m of answer.minutes) {
    if (m.confirmed || m.rejected || m.cancelled) {
      state.minutes.set(Math.floor(m.at / 60000), { CONFIRMED: m.confirmed, REJECTED: m.rejected, CANCELLED: m.cancelled });
    }
  }
  renderChart();
}

/** Reads the reports and the chart; says in the feed what was there before the page opened. */
async function loadAll() {
  const role = state.identity && state.identity.role;
  if (role === "CLIENT") {
    notice("Figures and charts are for ADMIN and SELLER tokens; this token sees its own orders in the live feed.");
    return;
  }
  const [summary, decisions] = await Promise.allSettled([loadSummary(), loadDecisions()]);
  const problems = [];
  if (summary.status === "rejected") problems.push("the reports at " + GATEWAY + " (" + summary.reason.message + ")");
  if (decisions.status === "rejected") problems.push("the decisions per minute (" + decisions.reason.message + ")");
  notice(problems.length ? "Could not load " + problems.join(" and ") + "; the live feed still works." : "");
  if (summary.status === "fulfilled" && !state.loadedOnce) {
    state.loadedOnce = true;
    const c = state.counts;
    const total = STATUSES.reduce((sum, s) => sum + c[s], 0);
    addFeedLine("info", "info", "Before now: " + count(total, "order") + " — " + c.CONFIRMED + " confirmed, " +
      c.REJECTED + " rejected, " + c.CANCELLED + " cancelled, " + c.PENDING + " pending; " +
      count(state.units, "unit") + " sold for " + money.format(state.revenue) + " (from the reports).");
  }
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => { loadAll().catch(() => {}); }, REFRESH_DELAY_MS);
}

// ---- rendering ------------------------------------------------------------------------------

function setCard(id, value, text) {
  const card = el(id);
  card.dataset.value = value === null ? "" : String(value);
  card.querySelector(".value").textContent = value === null ? "–" : text;
}

function renderCards() {
  for (const status of STATUSES) {
    const value = state.counts ? state.counts[status] : null;
    setCard("card-" + status, value, value === null ? "" : integer.format(value));
  }
  setCard("card-units", state.units, state.units === null ? "" : integer.format(state.units));
  setCard("card-revenue", state.revenue, state.revenue === null ? "" : money.format(state.revenue));
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderTop() {
  const body = el("top").querySelector("tbody");
  body.replaceChildren();
  for (const p of state.top) {
    const row = document.createElement("tr");
    row.dataset.productId = p.productId;
    row.append(cell(p.name || productName(p.productId)), cell(integer.format(p.unitsConfirmed), "num"),
      cell(money.format(p.revenueConfirmed), "num"));
    body.append(row);
  }
  el("top-empty").hidden = state.top.length > 0;
}

function renderLow() {
  const body = el("low").querySelector("tbody");
  const low = [...state.products.entries()]
    .filter(([, p]) => typeof p.stock === "number" && p.stock <= LOW_STOCK)
    .sort((a, b) => a[1].stock - b[1].stock);
  body.replaceChildren();
  for (const [id, p] of low) {
    const row = document.createElement("tr");
    row.dataset.productId = id;
    row.append(cell(productName(id)), cell(integer.format(p.stock), p.stock === 0 ? "num low-0" : "num"));
    body.append(row);
  }
  el("low-empty").hidden = low.length > 0;
  const watched = [...state.products.values()].filter((p) => typeof p.stock === "number").length;
  el("low-hint").textContent = "At most " + LOW_STOCK + " left, among the " + count(watched, "product") +
    " this page has seen (top products, products in events since it opened).";
}

const SVG = "http://www.w3.org/2000/svg";
function svg(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Stacked bars, one per minute of the last hour, newest on the right. */
function renderChart() {
  const chart = el("chart");
  const left = 34, top = 8, width = 600, height = 130;
  const now = Math.floor(Date.now() / 60000);
  const columns = [];
  for (let minute = now - MINUTES + 1; minute <= now; minute++) {
    const m = state.minutes.get(minute) || { CONFIRMED: 0, REJECTED: 0, CANCELLED: 0 };
    columns.push({ minute, m, total: m.CONFIRMED + m.REJECTED + m.CANCELLED });
  }
  // The scale's top is even, so its middle line is a whole number too.
  const highest = Math.max(2, ...columns.map((c) => c.total));
  const max = highest + (highest % 2);
  const scale = height / max;
  const slot = width / MINUTES;
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = top + height - fraction * height;
    nodes.push(svg("line", { class: "grid", x1: left, x2: left + width, y1: y, y2: y }));
    nodes.push(svg("text", { class: "axis", x: left - 6, y: y + 4, "text-anchor": "end" },
      integer.format(fraction * max)));
  }
  let total = 0;
  columns.forEach((c, i) => {
    total += c.total;
    const group = svg("g", { class: "bar", "data-minute": String(c.minute * 60000), "data-total": String(c.total) });
    const when = clock(new Date(c.minute * 60000)).slice(0, 5);
    group.append(svg("title", {}, when + " — " + c.m.CONFIRMED + " confirmed, " + c.m.REJECTED + " rejected, " + c.m.CANCELLED + " cancelled"));
    let y = top + height;
    for (const status of ["CONFIRMED", "REJECTED", "CANCELLED"]) {
      const h = c.m[status] * scale;
      if (h > 0) {
        y -= h;
        group.append(svg("rect", { class: status.toLowerCase(), x: left + i * slot + 1, y, width: slot - 2, height: h }));
      }
    }
    nodes.push(group);
  });
  const labels = [[0, "60 min ago"], [30, "30 min ago"], [MINUTES - 1, "now"]];
  for (const [i, text] of labels) {
    const anchor = i === 0 ? "start" : i === MINUTES - 1 ? "end" : "middle";
    const x = i === MINUTES - 1 ? left + width : left + i * slot;
    nodes.push(svg("text", { class: "axis", x, y: top + height + 16, "text-anchor": anchor }, text));
  }
  chart.replaceChildren(...nodes);
  chart.dataset.total = String(total);
  el("chart-summary").textContent = " — " + count(total, "decision") + " in the last hour";
}

/** A line of the live feed, newest first. */
function addFeedLine(kind, type, text, orderId) {
  const item = document.createElement("li");
  item.className = kind;
  item.dataset.type = type;
  if (orderId) {
    item.dataset.orderId = orderId;
    item.title = "order " + orderId;
  }
  const time = document.createElement("time");
  time.textContent = clock(new Date());
  const words = document.createElement("span");
  words.className = "text";
  words.textContent = text;
  item.append(time, words);
  feed.prepend(item);
  while (feed.children.length > FEED_LIMIT) feed.lastChild.remove();
  return words;
}

// ---- events ---------------------------------------------------------------------------------

function orderSentence(type, d) {
  const who = d.customerId ? " by " + d.customerId : "";
  let text = "order " + shortId(d.orderId) + who + ": " + d.quantity + " × " + productName(d.productId) + " " + OUTCOME_WORDS[type];
  if (d.reason && type !== "order.confirmed") text += " (" + d.reason + ")";
  return text;
}

function onOrderEvent(type, d) {
  const status = DECISIONS[type];
  if (state.counts) {
    if (type === "order.created") state.counts.PENDING += 1;
    if (status) {
      state.counts.PENDING = Math.max(0, state.counts.PENDING - 1);
      state.counts[status] += 1;
    }
    if (type === "order.confirmed") {
      state.units += d.quantity;
      const product = state.products.get(d.productId);
      if (product && typeof product.price === "number") state.revenue += product.price * d.quantity;
    }
    renderCards();
  }
  if (status) {
    const at = Date.parse(d.occurredAt);
    const minute = Math.floor((Number.isNaN(at) ? Date.now() : at) / 60000);
    const m = state.minutes.get(minute) || { CONFIRMED: 0, REJECTED: 0, CANCELLED: 0 };
    m[status] += 1;
    state.minutes.set(minute, m);
    renderChart();
  }
  const kind = status ? status.toLowerCase() : "created";
  const words = addFeedLine(kind, type, orderSentence(type, d), d.orderId);
  if (!state.products.has(d.productId) || !state.products.get(d.productId).name) {
    lookupProduct(d.productId).then(() => { words.textContent = orderSentence(type, d); });
  }
  if (state.identity && state.identity.role !== "CLIENT") scheduleRefresh();
}

const STOCK_WORDS = { created: "new product", reserved: "reserved for an order", released: "given back by an order" };

function stockSentence(d) {
  const delta = d.delta > 0 ? "+" + d.delta : "−" + Math.abs(d.delta);
  return "stock of " + productName(d.productId) + ": " + integer.format(d.stock) + " left (" + delta + ", " +
    (STOCK_WORDS[d.reason] || d.reason) + ")";
}

function onStockEvent(d) {
  rememberProduct(d.productId, { stock: d.stock, sellerId: d.sellerId });
  renderLow();
  const words = addFeedLine("stock", "stock.updated", stockSentence(d));
  if (!state.products.get(d.productId).name) {
    lookupProduct(d.productId).then(() => { words.textContent = stockSentence(d); renderLow(); });
  }
}

function onMessage(message) {
  switch (message.type) {
    case "welcome": {
      state.identity = { sub: message.sub, role: message.role, sellerId: message.sellerId };
      const scope = message.role === "ADMIN" ? "all products" : message.role === "SELLER" ? "the products of seller " + message.sellerId : "your own orders";
      el("who").textContent = "Signed in as " + message.sub + " (" + message.role + "): " + scope + ".";
      loadAll().catch(() => {});
      return;
    }
    case "order.created":
    case "order.confirmed":
    case "order.rejected":
    case "order.cancelled":
      onOrderEvent(message.type, message.data);
      return;
    case "stock.updated":
      onStockEvent(message.data);
      return;
    case "error":
      notice("The notifier said: " + message.message);
      return;
    default:
      // pong, and the notifier's own counters (ADMIN_STATS_UPDATED, SELLER_STATS_UPDATED): the
      // figures come from the reports instead.
      return;
  }
}

// ---- connection -----------------------------------------------------------------------------

function connect() {
  clearTimeout(retryTimer);
  const token = tokenField.value.trim();
  if (!token) { setStatus("disconnected"); return; }
  if (token !== state.token) state.loadedOnce = false;
  state.token = token;
  sessionStorage.setItem("notifier-token", token);
  if (socket) { socket.onclose = null; socket.close(); }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(scheme + "://" + location.host + "/ws?token=" + encodeURIComponent(token));
  socket.onopen = () => { retryDelay = 500; setStatus("connected"); };
  socket.onmessage = (event) => {
    try { onMessage(JSON.parse(event.data)); } catch (e) { /* not JSON: ignore */ }
  };
  socket.onclose = () => {
    setStatus("reconnecting");
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 5000);
  };
}

// Browsers cannot send ping frames; an application ping keeps idle proxies from closing us.
setInterval(() => {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send('{"type":"ping"}');
}, 15000);
// The chart's hour moves on even when nothing happens (no request: it only redraws).
setInterval(renderChart, 15000);

el("login").addEventListener("submit", (event) => { event.preventDefault(); connect(); });
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) history.replaceState(null, "", location.pathname + location.search);
tokenField.value = fromHash || sessionStorage.getItem("notifier-token") || "";
renderCards();
renderChart();
renderLow();
renderTop();
if (tokenField.value) connect();
