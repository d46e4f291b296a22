/* healthsync portfolio report: builds every view from the inlined data and redraws it when a filter changes.
 *
 * Data: #report-data (payload.py: JSON, gzip, base64), inflated with the browser's DecompressionStream.
 * Charts: #chart-specs (Vega specs compiled from Altair, charts.py), drawn by vega-embed; their data sets are
 * computed here from the filtered accounts. Text from the CRMs only ever goes into the DOM as text.
 * Figures a test or a script may read carry data-* attributes (#kpi-accounts[data-value], #band-table
 * tr[data-band][data-accounts], ...). body[data-ready="1"] once everything is drawn.
 */
(function () {
  "use strict";

  var D, M, A, N;            // payload, meta, accounts, account count
  var SCORES, BANDAT;        // per account: Float32Array of scores / Int8Array of band codes on the history grid
  var SEARCH;                // per account: lower-case text the search box matches
  var OPPS_BY, TASKS_BY;     // account index -> opportunity / task indices
  var VIEWS = {};            // chart name -> [vega views]
  var SPECS;
  var PAGE = 50;
  var S = {segment: "", owner: "", band: "", crm: "", renewal: "", search: "", sortKey: "priority", sortDir: 1,
           accountPage: 0, taskPage: 0, escPage: 0, view: "executive", detail: null};
  var SEL = [], INSEL;       // filtered account indices (priority order), membership mask

  // ------------------------------------------------------------------ small helpers

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) { return; }
        if (k === "text") { node.textContent = String(v); }
        else if (k === "cls") { node.className = v; }
        else { node.setAttribute(k, String(v)); }
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) { continue; }
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }
  function setText(id, text, value) {
    var node = document.getElementById(id);
    if (!node) { return; }
    node.textContent = text;
    if (value !== undefined) { node.setAttribute("data-value", value === null ? "" : String(value)); }
  }
  function known(v) { return v !== null && v !== undefined && !(typeof v === "number" && isNaN(v)); }
  function money(v) {
    if (!known(v)) { return "-"; }
    var sign = v < 0 ? "-" : "", a = Math.abs(v);
    if (a >= 1e9) { return sign + "$" + (a / 1e9).toFixed(1) + "B"; }
    if (a >= 1e6) { return sign + "$" + (a / 1e6).toFixed(1) + "M"; }
    if (a >= 1e3) { return sign + "$" + (a / 1e3).toFixed(0) + "K"; }
    return sign + "$" + a.toFixed(0);
  }
  function signedMoney(v) { return known(v) ? (v >= 0 ? "+" : "-") + money(Math.abs(v)) : "-"; }
  function num(v) { return known(v) ? Math.round(v).toLocaleString("en-US") : "-"; }
  function pct(v) { return known(v) ? (v * 100).toFixed(1) + "%" : "-"; }
  function score(v) { return known(v) ? Number(v).toFixed(1) : "-"; }
  function signed(v) { return known(v) ? (v >= 0 ? "+" : "") + Number(v).toFixed(1) : "-"; }
  function fixed2(v) { return known(v) ? Number(v).toFixed(2) : ""; }
  function dayDate(day) { var d = new Date(day * 86400000); return new Date(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()); }
  function dayText(day) { return known(day) ? new Date(day * 86400000).toISOString().slice(0, 10) : "-"; }
  function quarterOf(day) { var d = new Date(day * 86400000); return d.getUTCFullYear() + " Q" + (Math.floor(d.getUTCMonth() / 3) + 1); }
  var LABELS = {smb: "SMB", mid_market: "Mid-market", "(none)": "(none)"};
  function label(text) {
    if (LABELS[text]) { return LABELS[text]; }
    var t = String(text).replace(/_/g, " ");
    return t.charAt(0).toUpperCase() + t.slice(1);
  }
  function sum(list, f) { var s = 0; for (var i = 0; i < list.length; i++) { var v = f(list[i]); if (known(v)) { s += v; } } return s; }

  // ------------------------------------------------------------------ data

  function inflate(b64) {
    var bin = atob(b64.trim()), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }

  function prepare() {
    M = D.meta; A = D.accounts; N = A.id.length;
    var grid = M.history.grid || [], G = grid.length;
    SCORES = new Array(N); BANDAT = new Array(N); SEARCH = new Array(N);
    for (var i = 0; i < N; i++) {
      var enc = D.history.series[i] || [], s = new Float32Array(G), prev = null;
      for (var g = 0; g < G; g++) {
        var v = enc[g];
        if (v === null || v === undefined) { s[g] = NaN; continue; }
        prev = prev === null ? v : prev + v;
        s[g] = prev / 10;
      }
      SCORES[i] = s;
      var ev = D.history.bands[i] || [], b = new Int8Array(G), k = -1;
      for (g = 0; g < G; g++) {
        while (k + 1 < ev.length && ev[k + 1][0] <= grid[g]) { k++; }
        b[g] = isNaN(s[g]) || k < 0 ? -1 : ev[k][1];
      }
      BANDAT[i] = b;
      var o = A.owner[i] === null ? null : M.owners[A.owner[i]];
      SEARCH[i] = [A.name[i], A.id[i], o ? o.name : "", o ? o.email : "", bandName(i), segmentName(i)].join(" ").toLowerCase();
    }
    OPPS_BY = index(D.opps.acct); TASKS_BY = index(D.tasks.acct);
  }
  function index(accts) {
    var out = {};
    for (var j = 0; j < accts.length; j++) { (out[accts[j]] = out[accts[j]] || []).push(j); }
    return out;
  }
  function band(i) { return A.band[i] === null ? null : M.bands[A.band[i]]; }
  function bandName(i) { var b = band(i); return b ? b.name : "-"; }
  function segmentName(i) { return A.segment[i] === null ? "-" : M.segments[A.segment[i]]; }
  function atRisk(i) { var b = band(i); return !!(b && b.at_risk); }
  function change(i) { return known(A.d30[i]) ? A.d30[i] : A.dprev[i]; }
  function healthiest() {
    var conf = M.bands.filter(function (b) { return b.configured; });
    return conf.length ? M.bands.indexOf(conf[conf.length - 1]) : -1;
  }

  // ------------------------------------------------------------------ filters

  function fillSelect(id, options) {
    var sel = document.getElementById(id);
    options.forEach(function (o) { sel.appendChild(el("option", {value: o[0], title: o[2] || null, text: o[1]})); });
    sel.addEventListener("change", function () { S[id.slice(2)] = sel.value; S.accountPage = 0; S.taskPage = 0; S.escPage = 0; update(); });
  }

  function setupFilters() {
    fillSelect("f-segment", M.segments.map(function (s, i) { return [String(i), label(s)]; }));
    var owners = M.owners.map(function (o, i) { return [String(i), o.name || o.email, o.email]; });
    owners.sort(function (a, b) { return a[1].localeCompare(b[1]); });
    fillSelect("f-owner", owners);
    fillSelect("f-band", M.bands.map(function (b, i) { return [String(i), b.name]; }));
    fillSelect("f-crm", M.crms.map(function (c, i) { return [String(i), M.crm_labels[i]]; }));
    fillSelect("f-renewal", M.renewal_windows.map(function (d) { return [String(d), "Renewing within " + d + " days"]; }));
    $("#f-reset").addEventListener("click", function () {
      ["segment", "owner", "band", "crm", "renewal"].forEach(function (k) { S[k] = ""; document.getElementById("f-" + k).value = ""; });
      S.accountPage = 0; S.taskPage = 0; S.escPage = 0;
      update();
    });
  }

  function select() {
    var seg = S.segment === "" ? -1 : +S.segment, own = S.owner === "" ? -1 : +S.owner;
    var bnd = S.band === "" ? -1 : +S.band, crm = S.crm === "" ? -1 : +S.crm;
    var win = S.renewal === "" ? -1 : +S.renewal, today = M.now_day;
    SEL = []; INSEL = new Uint8Array(N);
    for (var i = 0; i < N; i++) {
      if (seg >= 0 && A.segment[i] !== seg) { continue; }
      if (own >= 0 && A.owner[i] !== own) { continue; }
      if (bnd >= 0 && A.band[i] !== bnd) { continue; }
      if (crm >= 0 && A.crm[i] !== crm) { continue; }
      if (win >= 0) { var r = A.renewal[i]; if (r === null || r < today || r > today + win) { continue; } }
      SEL.push(i); INSEL[i] = 1;
    }
    var parts = [];
    if (seg >= 0) { parts.push(label(M.segments[seg])); }
    if (own >= 0) { parts.push(M.owners[own].name || M.owners[own].email); }
    if (bnd >= 0) { parts.push(M.bands[bnd].name); }
    if (crm >= 0) { parts.push(M.crm_labels[crm]); }
    if (win >= 0) { parts.push("renewing within " + win + " days"); }
    var summary = document.getElementById("filter-summary");
    summary.textContent = "Showing " + num(SEL.length) + " of " + num(N) + " accounts" + (parts.length ? " (" + parts.join(", ") + ")" : "");
    summary.setAttribute("data-shown", String(SEL.length));
  }

  // ------------------------------------------------------------------ shared cells

  function ownerCell(code) {
    if (code === null || code === undefined) { return el("span", {cls: "muted", text: "(no owner)"}); }
    var o = M.owners[code];
    return o.name ? el("span", {cls: "owner", title: o.email, "data-email": o.email, text: o.name}) : el("span", {"data-email": o.email, text: o.email});
  }
  function crmLink(crmCode, kind, id, text) {
    if (crmCode === null || crmCode === undefined || !id) { return null; }
    var crm = M.crms[crmCode], t = (M.links[crm] || {})[kind];
    if (!t) { return null; }
    var raw = String(id).replace(/^(sf|hs):/, "");
    var label_ = M.crm_labels[crmCode];
    return el("a", {href: t.replace("{id}", encodeURIComponent(raw)), target: "_blank", rel: "noopener",
                    cls: text ? "crm-record" : "crm-link", "data-crm": crm, "data-kind": kind, "data-record-id": raw,
                    title: "Open in " + label_, text: text || (crm === "salesforce" ? "SF" : crm === "hubspot" ? "HS" : crm) + " \u2197"});
  }
  function accountCell(i) {
    var td = el("td", null, el("a", {href: "#account=" + encodeURIComponent(A.id[i]), cls: "account-link", text: A.name[i]}));
    var link = crmLink(A.crm[i], "account", A.id[i]);
    if (link) { td.appendChild(link); }
    return td;
  }
  function bandCell(i) {
    var b = band(i);
    return el("td", null, b ? el("span", {cls: "pill", style: "background:" + b.color, text: b.name}) : "-");
  }
  function trendText(i) {
    var m = A.momentum[i], word = m === 1 ? "up" : m === -1 ? "down" : m === 0 ? "stable" : "";
    if (known(A.d30[i])) { return (word + " " + signed(A.d30[i]) + " (30d)").trim(); }
    if (known(A.dprev[i])) { return (word + " " + signed(A.dprev[i]) + " (last run)").trim(); }
    return "new";
  }
  function momentumClass(i) { var m = A.momentum[i]; return m === 1 ? "up" : m === -1 ? "down" : m === 0 ? "stable" : ""; }
  function fillBody(table, rows) {
    var body = $(table + " tbody");
    body.textContent = "";
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    body.appendChild(frag);
  }
  function pager(id, total, page, onPage) {
    var box = document.getElementById(id);
    box.textContent = "";
    var pages = Math.max(1, Math.ceil(total / PAGE));
    if (total <= PAGE) { box.setAttribute("data-pages", "1"); return; }
    var prev = el("button", {type: "button", text: "\u2039 Previous", disabled: page <= 0 ? "disabled" : null});
    var next = el("button", {type: "button", text: "Next \u203a", disabled: page >= pages - 1 ? "disabled" : null});
    prev.addEventListener("click", function () { onPage(page - 1); });
    next.addEventListener("click", function () { onPage(page + 1); });
    box.setAttribute("data-pages", String(pages));
    box.appendChild(prev);
    box.appendChild(el("span", {text: "Page " + (page + 1) + " of " + pages + " (" + num(total) + ")"}));
    box.appendChild(next);
  }

  // ------------------------------------------------------------------ charts

  // A chart is embedded the first time it gets data (with that data inline, so Vega never draws an empty data
  // set on the way); later calls replace its data sets. WAIT collects what is still drawing.
  var WAIT = [];
  function withValues(spec, sets) {
    var copy = JSON.parse(JSON.stringify(spec));
    (copy.data || []).forEach(function (d) { if (sets[d.name]) { d.values = sets[d.name]; } });
    return copy;
  }
  function chartData(name, sets) {
    var c = VIEWS[name] || (VIEWS[name] = {views: [], pending: null, loading: null});
    var job;
    if (c.loading) { c.pending = sets; return; }
    if (!c.views.length) {
      job = Promise.all($all('[data-chart="' + name + '"]').map(function (node) {
        return vegaEmbed(node, withValues(SPECS[name], sets), {mode: "vega", renderer: "svg", actions: false}).then(function (res) {
          res.view.logLevel(1);  // errors only from here on: a filter that leaves a chart empty is not worth a warning
          c.views.push(res.view);
        });
      })).then(function () {
        c.loading = null;
        if (c.pending) { var p = c.pending; c.pending = null; chartData(name, p); }
      });
      c.loading = job;
    } else {
      job = Promise.all(c.views.map(function (view) {
        Object.keys(sets).forEach(function (k) { view.data(k, sets[k]); });
        return view.runAsync();
      }));
    }
    WAIT.push(job);
  }

  // ------------------------------------------------------------------ executive view

  function bandSummary(list) {
    var rows = M.bands.map(function (b) { return {band: b.name, at_risk: b.at_risk, accounts: 0, arr: 0}; });
    list.forEach(function (i) { var c = A.band[i]; if (c !== null) { rows[c].accounts++; rows[c].arr += A.arr[i] || 0; } });
    var total = list.length, totalArr = sum(rows, function (r) { return r.arr; });
    rows.forEach(function (r) { r.share = total ? r.accounts / total : 0; r.arr_share = totalArr ? r.arr / totalArr : 0; });
    return rows;
  }

  function movement(list) {
    var up = [], down = [], stable = [], none = [];
    list.forEach(function (i) { var m = A.momentum[i]; (m === 1 ? up : m === -1 ? down : m === 0 ? stable : none).push(i); });
    return {up: up, down: down, stable: stable, none: none};
  }

  function netText(mv) {
    var net = mv.up.length - mv.down.length;
    return {net: net, text: (net > 0 ? "Positive" : net < 0 ? "Negative" : "Flat") + " (" + (net > 0 ? "+" : "") + num(net) + ")"};
  }

  function renderExecutive() {
    var list = SEL, rows = bandSummary(list);
    var arr = sum(list, function (i) { return A.arr[i]; });
    var risky = rows.filter(function (r) { return r.at_risk; });
    var arrRisk = sum(risky, function (r) { return r.arr; });
    var scored = list.filter(function (i) { return known(A.score[i]); });
    var mean = scored.length ? sum(scored, function (i) { return A.score[i]; }) / scored.length : null;
    var mv = movement(list), net = netText(mv);
    setText("kpi-accounts", num(list.length), list.length);
    setText("kpi-accounts-sub", list.length === N ? "" : "of " + num(N));
    setText("kpi-arr", money(arr), fixed2(arr));
    setText("kpi-arr-at-risk", money(arrRisk), fixed2(arrRisk));
    setText("kpi-arr-at-risk-sub", (arr ? pct(arrRisk / arr) : "0.0%") + " of ARR \u00b7 " +
      (risky.map(function (r) { return r.band; }).join(", ") || "no band flagged at risk"));
    setText("kpi-mean-score", score(mean), mean === null ? "" : mean.toFixed(2));
    setText("kpi-improving", num(mv.up.length), mv.up.length);
    setText("kpi-improving-sub", list.length ? pct(mv.up.length / list.length) + " of accounts" : "");
    setText("kpi-declining", num(mv.down.length), mv.down.length);
    setText("kpi-declining-sub", list.length ? pct(mv.down.length / list.length) + " of accounts" : "");
    setText("kpi-net-trend", net.text, net.net);
    setText("kpi-net-trend-sub", "improving minus declining");

    fillBody("#band-table", rows.map(function (r) {
      var b = M.bands[rows.indexOf(r)];
      return el("tr", {"data-band": r.band, "data-accounts": r.accounts, "data-arr": fixed2(r.arr), "data-at-risk": r.at_risk ? "true" : "false"},
        el("td", null, el("span", {cls: "pill", style: "background:" + b.color, text: r.band}), r.at_risk ? el("span", {cls: "muted", text: " at risk"}) : null),
        el("td", {cls: "num", text: num(r.accounts)}), el("td", {cls: "num", text: pct(r.share)}),
        el("td", {cls: "num", text: money(r.arr)}), el("td", {cls: "num", text: pct(r.arr_share)}));
    }));
    chartData("bands", {bands: rows.filter(function (r) { return r.accounts > 0 || M.bands[rows.indexOf(r)].configured; })});

    var dist = [];
    var bins = {};
    list.forEach(function (i) {
      if (!known(A.score[i]) || A.band[i] === null) { return; }
      var start = Math.min(95, Math.floor(Math.max(0, A.score[i]) / 5) * 5), key = start + ":" + A.band[i];
      bins[key] = (bins[key] || 0) + 1;
    });
    Object.keys(bins).forEach(function (k) {
      var p = k.split(":"), s = +p[0], b = +p[1];
      dist.push({start: s, end: s + 5, band: M.bands[b].name, order: b, accounts: bins[k]});
    });
    chartData("distribution", {distribution: dist});

    var top = list.filter(atRisk).sort(function (a, b) { return (A.arr[b] || 0) - (A.arr[a] || 0) || (A.id[a] < A.id[b] ? -1 : 1); }).slice(0, 10);
    fillBody("#top-at-risk", top.map(function (i, k) {
      return el("tr", {"data-account-id": A.id[i], "data-arr": fixed2(A.arr[i]), "data-band": bandName(i)},
        el("td", {text: k + 1}), accountCell(i), bandCell(i), el("td", {cls: "num", text: score(A.score[i])}),
        el("td", {cls: "num", text: money(A.arr[i])}), el("td", {cls: momentumClass(i), text: trendText(i)}),
        el("td", {cls: "nw", text: dayText(A.renewal[i])}), el("td", null, ownerCell(A.owner[i])), el("td", {text: A.drivers[i]}));
    }));
    $("#top-at-risk-empty").hidden = top.length > 0;

    var best = healthiest(), today = M.now_day, horizon = M.renewal_horizon;
    var due = list.filter(function (i) { var r = A.renewal[i]; return r !== null && r >= today && r <= today + horizon && A.band[i] !== best; })
      .sort(function (a, b) { return A.renewal[a] - A.renewal[b] || (A.id[a] < A.id[b] ? -1 : 1); });
    fillBody("#renewals-at-risk", due.slice(0, 25).map(function (i) {
      return el("tr", {"data-account-id": A.id[i]}, el("td", {cls: "nw", text: dayText(A.renewal[i])}),
        el("td", {cls: "num", text: A.renewal[i] - today}), accountCell(i), bandCell(i),
        el("td", {cls: "num", text: score(A.score[i])}), el("td", {cls: "num", text: money(A.arr[i])}), el("td", null, ownerCell(A.owner[i])));
    }));
    var more = document.getElementById("renewals-at-risk-more");
    more.setAttribute("data-total", String(due.length));
    more.textContent = due.length > 25 ? (due.length - 25) + " more renewals at risk in the window: filter the Accounts view by renewal to see them all."
      : due.length ? "" : "No renewal in the next " + horizon + " days is outside the healthiest band.";
  }

  // ------------------------------------------------------------------ trends

  function portfolioTrend(list) {
    var grid = M.history.grid || [], G = grid.length, trend = [], mix = [];
    var sums = new Float64Array(G), counts = new Int32Array(G), up = new Int32Array(G), down = new Int32Array(G);
    var B = M.bands.length, per = new Int32Array(G * B);
    list.forEach(function (i) {
      var s = SCORES[i], b = BANDAT[i];
      for (var g = 0; g < G; g++) {
        if (isNaN(s[g])) { continue; }
        sums[g] += s[g]; counts[g]++;
        if (b[g] >= 0) {
          per[g * B + b[g]]++;
          var p = g ? b[g - 1] : -1;
          if (p >= 0 && p !== b[g] && M.bands[p].configured && M.bands[b[g]].configured) { if (b[g] > p) { up[g]++; } else { down[g]++; } }
        }
      }
    });
    for (var g = 0; g < G; g++) {
      if (!counts[g]) { continue; }
      var date = dayDate(grid[g]);
      trend.push({date: date, mean: sums[g] / counts[g], accounts: counts[g], moved_up: up[g], moved_down: down[g], changes: up[g] + down[g]});
      for (var k = 0; k < B; k++) {
        if (per[g * B + k]) { mix.push({date: date, band: M.bands[k].name, order: k, accounts: per[g * B + k], share: per[g * B + k] / counts[g]}); }
      }
    }
    return {trend: trend, mix: mix};
  }

  function renderTrendCharts() {
    var h = M.history, days = h.scored_days || 0;
    var single = days <= 1;
    $all(".trend-empty").forEach(function (p) {
      p.hidden = !single;
      p.textContent = days === 0 ? "No scores recorded yet: the trend starts with the first run."
        : "Only one day of scores so far" + (h.grid && h.grid.length ? " (" + dayText(h.grid[h.grid.length - 1]) + ")" : "") +
          ": the trend starts with the next day's run.";
    });
    $all(".trend-chart").forEach(function (c) { c.hidden = single; });
    $all(".trend-caption").forEach(function (p) {
      if (single) { p.textContent = ""; return; }
      var weekly = h.daily_from !== null && h.grid.length && h.daily_from > h.grid[0];
      p.textContent = "Mean score per day over " + days + " scored days; diamonds mark days on which accounts changed band (size = how many)." +
        (weekly ? " Daily points from " + dayText(h.daily_from) + "; one point per week (its last score) before." : "");
    });
    if (single) { return; }
    var t = portfolioTrend(SEL);
    chartData("trend", t);
    chartData("trend-detail", t);
  }

  function renderTrends() {
    var mv = movement(SEL), total = SEL.length, net = netText(mv);
    var rows = [["Improving", mv.up], ["Stable", mv.stable], ["Declining", mv.down], ["No trend yet", mv.none]];
    fillBody("#movers-table", rows.map(function (r) {
      return el("tr", {"data-direction": r[0], "data-accounts": r[1].length},
        el("td", {text: r[0]}), el("td", {cls: "num", text: num(r[1].length)}),
        el("td", {cls: "num", text: total ? pct(r[1].length / total) : "-"}), el("td", {cls: "num", text: money(sum(r[1], function (i) { return A.arr[i]; }))}));
    }));
    setText("net-trend", net.text, net.net);
    var groups = {}, order = [];
    SEL.forEach(function (i) {
      var g = label(segmentName(i));
      if (!groups[g]) { groups[g] = {up: [], down: []}; order.push(g); }
      if (A.momentum[i] === 1) { groups[g].up.push(i); } else if (A.momentum[i] === -1) { groups[g].down.push(i); }
    });
    var movers = [];
    order.forEach(function (g) {
      var u = groups[g].up, d = groups[g].down;
      movers.push({group: g, direction: "Improving", signed: u.length, accounts: u.length, arr: sum(u, function (i) { return A.arr[i]; })});
      movers.push({group: g, direction: "Declining", signed: -d.length, accounts: d.length, arr: sum(d, function (i) { return A.arr[i]; })});
    });
    chartData("movers", {movers: movers});
    function moverRows(list, dir) {
      return list.slice().sort(function (a, b) { return dir * ((change(b) || 0) - (change(a) || 0)) || (A.id[a] < A.id[b] ? -1 : 1); })
        .slice(0, 10).map(function (i) {
          return el("tr", {"data-account-id": A.id[i]}, accountCell(i), bandCell(i), el("td", {cls: "num", text: score(A.score[i])}),
            el("td", {cls: "num " + momentumClass(i), text: signed(change(i))}), el("td", {cls: "num", text: money(A.arr[i])}),
            el("td", null, ownerCell(A.owner[i])));
        });
    }
    fillBody("#improvers", mv.up.length ? moverRows(mv.up, 1) : [el("tr", null, el("td", {colspan: 6, cls: "muted", text: "No account is improving."}))]);
    fillBody("#decliners", mv.down.length ? moverRows(mv.down, -1) : [el("tr", null, el("td", {colspan: 6, cls: "muted", text: "No account is declining."}))]);
  }

  // ------------------------------------------------------------------ segments and lifecycle

  function groupRows(table, attr, codes, labels) {
    var groups = labels.map(function (name) { return {name: name, list: []}; });
    SEL.forEach(function (i) { var c = codes[i]; if (c !== null) { groups[c].list.push(i); } });
    var chart = [];
    var rows = groups.filter(function (g) { return g.list.length; }).map(function (g) {
      var arr = sum(g.list, function (i) { return A.arr[i]; });
      var risky = g.list.filter(atRisk), arrRisk = sum(risky, function (i) { return A.arr[i]; });
      var scored = g.list.filter(function (i) { return known(A.score[i]); });
      var mean = scored.length ? sum(scored, function (i) { return A.score[i]; }) / scored.length : null;
      var byBand = {};
      g.list.forEach(function (i) { var b = A.band[i]; if (b === null) { return; } (byBand[b] = byBand[b] || []).push(i); });
      Object.keys(byBand).forEach(function (b) {
        var l = byBand[b];
        chart.push({group: label(g.name), band: M.bands[b].name, order: +b, at_risk: M.bands[b].at_risk, accounts: l.length, arr: sum(l, function (i) { return A.arr[i]; })});
      });
      var attrs = {"data-accounts": g.list.length, "data-arr": fixed2(arr), "data-at-risk": risky.length, "data-arr-at-risk": fixed2(arrRisk)};
      attrs[attr] = g.name;
      return el("tr", attrs, el("td", {text: label(g.name)}), el("td", {cls: "num", text: num(g.list.length)}),
        el("td", {cls: "num", text: money(arr)}), el("td", {cls: "num", text: score(mean)}), el("td", {cls: "num", text: num(risky.length)}),
        el("td", {cls: "num", text: money(arrRisk)}), el("td", {cls: "num", text: arr ? pct(arrRisk / arr) : "-"}));
    });
    fillBody(table, rows);
    return chart;
  }

  function renderSegments() {
    chartData("segments", {segments: groupRows("#segment-table", "data-segment", A.segment, M.segments)});
    chartData("lifecycle", {lifecycle: groupRows("#lifecycle-table", "data-stage", A.lifecycle, M.lifecycles)});
  }

  // ------------------------------------------------------------------ renewals and forecast

  function renderRenewals() {
    var today = M.now_day, quarters = {}, keys = [];
    SEL.forEach(function (i) {
      var r = A.renewal[i];
      if (r === null || r < today || r > today + 365) { return; }
      var q = quarterOf(r);
      if (!quarters[q]) { quarters[q] = {accounts: 0, arr: 0, adjusted: 0, risk: 0}; keys.push(q); }
      var a = A.arr[i] || 0, f = known(A.renew[i]) ? A.renew[i] : 1;
      quarters[q].accounts++; quarters[q].arr += a; quarters[q].adjusted += a * f;
      if (atRisk(i)) { quarters[q].risk += a; }
    });
    keys.sort();
    var bars = [];
    fillBody("#renewal-forecast", keys.map(function (q) {
      var v = quarters[q];
      bars.push({quarter: q, series: "Renewal ARR", arr: v.arr, accounts: v.accounts});
      bars.push({quarter: q, series: "Health-adjusted", arr: v.adjusted, accounts: v.accounts});
      bars.push({quarter: q, series: "At risk", arr: v.risk, accounts: v.accounts});
      return el("tr", {"data-quarter": q, "data-accounts": v.accounts, "data-arr": fixed2(v.arr), "data-adjusted": fixed2(v.adjusted), "data-at-risk": fixed2(v.risk)},
        el("td", {text: q}), el("td", {cls: "num", text: num(v.accounts)}), el("td", {cls: "num", text: money(v.arr)}),
        el("td", {cls: "num", text: money(v.adjusted)}), el("td", {cls: "num " + (v.adjusted < v.arr ? "down" : ""), text: signedMoney(v.adjusted - v.arr)}),
        el("td", {cls: "num", text: money(v.risk)}));
    }));
    if (!keys.length) { fillBody("#renewal-forecast", [el("tr", null, el("td", {colspan: 6, cls: "muted", text: "No renewal in the next 12 months."}))]); }
    chartData("renewals", {renewals: bars});

    var O = D.opps, byQ = {}, qs = [];
    for (var j = 0; j < O.acct.length; j++) {
      if (!INSEL[O.acct[j]]) { continue; }
      var q = O.close[j] === null ? "no close date" : quarterOf(O.close[j]);
      if (!byQ[q]) { byQ[q] = {n: 0, amount: 0, before: 0, after: 0}; qs.push(q); }
      var amt = O.amount[j] || 0;
      byQ[q].n++; byQ[q].amount += amt; byQ[q].before += amt * (O.prob[j] || 0);
      byQ[q].after += amt * (known(O.adj[j]) ? O.adj[j] : (O.prob[j] || 0));
    }
    qs.sort();
    var pbars = [];
    fillBody("#forecast-table", qs.map(function (q) {
      var v = byQ[q];
      pbars.push({quarter: q, series: "Before (CRM probability)", expected: v.before, accounts: v.n});
      pbars.push({quarter: q, series: "After health adjustment", expected: v.after, accounts: v.n});
      return el("tr", {"data-quarter": q, "data-opps": v.n, "data-before": fixed2(v.before), "data-after": fixed2(v.after)},
        el("td", {text: q}), el("td", {cls: "num", text: num(v.n)}), el("td", {cls: "num", text: money(v.amount)}),
        el("td", {cls: "num", text: money(v.before)}), el("td", {cls: "num", text: money(v.after)}),
        el("td", {cls: "num " + (v.after < v.before ? "down" : "up"), text: signedMoney(v.after - v.before)}));
    }));
    if (!qs.length) { fillBody("#forecast-table", [el("tr", null, el("td", {colspan: 6, cls: "muted", text: "No open opportunities."}))]); }
    chartData("pipeline", {pipeline: pbars});
  }

  // ------------------------------------------------------------------ accounts

  var SORTS = {
    priority: function (i) { return i; },
    name: function (i) { return A.name[i].toLowerCase(); },
    band: function (i) { return A.band[i] === null ? 999 : A.band[i]; },
    score: function (i) { return known(A.score[i]) ? A.score[i] : -1; },
    change: function (i) { var c = change(i); return known(c) ? c : -9999; },
    arr: function (i) { return A.arr[i] || 0; },
    renewal: function (i) { return A.renewal[i] === null ? 9e9 : A.renewal[i]; },
    segment: function (i) { return segmentName(i); },
    owner: function (i) { var o = A.owner[i] === null ? null : M.owners[A.owner[i]]; return o ? (o.name || o.email).toLowerCase() : "~"; }
  };

  function renderAccounts() {
    var q = S.search.trim().toLowerCase(), terms = q ? q.split(/\s+/) : [];
    var list = terms.length ? SEL.filter(function (i) { return terms.every(function (t) { return SEARCH[i].indexOf(t) >= 0; }); }) : SEL.slice();
    var key = SORTS[S.sortKey] || SORTS.priority, dir = S.sortDir;
    if (S.sortKey !== "priority" || dir !== 1) {
      list.sort(function (a, b) { var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : a - b) * dir; });
    }
    var pages = Math.max(1, Math.ceil(list.length / PAGE));
    if (S.accountPage >= pages) { S.accountPage = pages - 1; }
    var page = list.slice(S.accountPage * PAGE, (S.accountPage + 1) * PAGE);
    fillBody("#account-table", page.map(function (i) {
      return el("tr", {"data-account-id": A.id[i]}, el("td", {cls: "num", text: i + 1}), accountCell(i), bandCell(i),
        el("td", {cls: "num", text: score(A.score[i])}), el("td", {cls: "num " + momentumClass(i), text: signed(change(i))}),
        el("td", {cls: "num", text: money(A.arr[i])}), el("td", {cls: "nw", text: dayText(A.renewal[i])}),
        el("td", {text: label(segmentName(i))}), el("td", null, ownerCell(A.owner[i])), el("td", {text: A.drivers[i]}));
    }));
    if (!page.length) { fillBody("#account-table", [el("tr", null, el("td", {colspan: 10, cls: "muted", text: "No account matches."}))]); }
    setText("account-count", num(list.length) + (list.length === 1 ? " account" : " accounts") + (q ? " match \u201c" + S.search.trim() + "\u201d" : ""), list.length);
    $all("#account-table th[data-sort]").forEach(function (th) {
      th.classList.toggle("sorted-asc", th.getAttribute("data-sort") === S.sortKey && dir === 1);
      th.classList.toggle("sorted-desc", th.getAttribute("data-sort") === S.sortKey && dir === -1);
    });
    pager("account-pager", list.length, S.accountPage, function (p) { S.accountPage = p; renderAccounts(); });
  }

  function setupAccounts() {
    var box = document.getElementById("account-search"), timer = null;
    box.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { S.search = box.value; S.accountPage = 0; renderAccounts(); }, 120);
    });
    $all("#account-table th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () {
        var k = th.getAttribute("data-sort");
        if (S.sortKey === k) { S.sortDir = -S.sortDir; } else { S.sortKey = k; S.sortDir = (k === "arr" || k === "score" || k === "change") ? -1 : 1; }
        S.accountPage = 0;
        renderAccounts();
      });
    });
    var detail = document.getElementById("account-detail");
    detail.appendChild(el("div", {id: "detail-head"}));
    var grid = el("div", {cls: "drill"});
    var left = el("div", null, el("h3", {text: "Score history"}), el("p", {cls: "note", id: "detail-trend-empty", hidden: "hidden"}),
      el("div", {cls: "chart", "data-chart": "account", id: "detail-chart"}), el("p", {cls: "muted", id: "detail-trend-caption"}));
    var right = el("div", {id: "detail-facts"});
    grid.appendChild(left); grid.appendChild(right);
    detail.appendChild(grid);
    detail.appendChild(el("div", {id: "detail-lists"}));
  }

  function showDetail(i) {
    S.detail = i;
    var detail = document.getElementById("account-detail");
    detail.hidden = false;
    detail.setAttribute("data-account-id", A.id[i]);
    var head = document.getElementById("detail-head");
    head.textContent = "";
    var h = el("h2", null, A.name[i] + " ");
    var link = crmLink(A.crm[i], "account", A.id[i], "Open in " + M.crm_labels[A.crm[i]] + " \u2197");
    head.appendChild(h);
    if (link) { head.appendChild(el("p", null, link)); }

    var facts = document.getElementById("detail-facts");
    facts.textContent = "";
    var b = band(i), f = el("div", {cls: "facts"});
    [["Band", b ? el("span", {cls: "pill", style: "background:" + b.color, text: b.name}) : "-"], ["Score", score(A.score[i])],
     ["Confidence", pct(A.confidence[i])], ["Trend", el("span", {cls: momentumClass(i), text: trendText(i)})],
     ["ARR", money(A.arr[i])], ["Renewal", dayText(A.renewal[i])], ["Segment", label(segmentName(i))],
     ["Lifecycle", A.lifecycle[i] === null ? "-" : label(M.lifecycles[A.lifecycle[i]])], ["Owner", ownerCell(A.owner[i])],
     ["CRM", M.crm_labels[A.crm[i]] + " " + A.id[i]], ["CSM override", A.override[i]]].forEach(function (p) {
      f.appendChild(el("div", {"data-fact": p[0]}, el("span", {text: p[0]}), p[1]));
    });
    facts.appendChild(f);
    facts.appendChild(el("p", null, el("b", {text: "Drivers: "}), A.drivers[i] || "none recorded"));
    var dims = A.dims[i] || [];
    if (dims.some(known)) {
      var t = el("table", {cls: "dimensions"}, el("thead", null, el("tr", null, el("th", {text: "Dimension"}), el("th", {cls: "num", text: "Score"}))));
      var tb = el("tbody");
      M.dimensions.forEach(function (d, k) { if (known(dims[k])) { tb.appendChild(el("tr", null, el("td", {text: label(d)}), el("td", {cls: "num", text: score(dims[k])}))); } });
      t.appendChild(tb);
      facts.appendChild(t);
    }

    // trend
    var grid = M.history.grid || [], s = SCORES[i], bs = BANDAT[i], points = [], changes = [];
    for (var g = 0; g < grid.length; g++) {
      if (isNaN(s[g])) { continue; }
      points.push({date: dayDate(grid[g]), score: s[g], band: bs[g] >= 0 ? M.bands[bs[g]].name : "-"});
    }
    var ev = D.history.bands[i] || [];
    for (var k = 1; k < ev.length; k++) {
      changes.push({date: dayDate(ev[k][0]), band: M.bands[ev[k][1]].name, previous: M.bands[ev[k - 1][1]].name});
    }
    var empty = document.getElementById("detail-trend-empty"), chartBox = document.getElementById("detail-chart");
    var single = points.length <= 1;
    empty.hidden = !single;
    chartBox.hidden = single;
    empty.textContent = points.length ? "One scored day so far (" + dayText(grid[grid.length - 1]) + "): the trend starts with the next day's run." : "No score history yet.";
    document.getElementById("detail-trend-caption").textContent = single ? "" :
      points.length + " daily points, " + changes.length + " band change" + (changes.length === 1 ? "" : "s") + " (dashed lines).";
    chartBox.setAttribute("data-points", String(points.length));
    chartBox.setAttribute("data-band-changes", String(changes.length));
    if (!single) { chartData("account", {account: points, changes: changes}); }

    // opportunities and tasks
    var lists = document.getElementById("detail-lists");
    lists.textContent = "";
    var opps = OPPS_BY[i] || [], O = D.opps;
    lists.appendChild(el("h3", {text: "Open opportunities"}));
    if (opps.length) {
      var ot = el("table", {cls: "opps"}, el("thead", null, el("tr", null, el("th", {text: "Opportunity"}), el("th", {text: "Stage"}), el("th", {text: "Close"}),
        el("th", {cls: "num", text: "Amount"}), el("th", {cls: "num", text: "Base prob."}), el("th", {cls: "num", text: "Adjusted"}))));
      var ob = el("tbody");
      opps.forEach(function (j) {
        var name = crmLink(O.crm[j], "opportunity", O.id[j], O.name[j] || O.id[j]) || el("span", {text: O.name[j] || O.id[j]});
        ob.appendChild(el("tr", {"data-opportunity-id": O.id[j]}, el("td", null, name), el("td", {text: O.stage[j] === null ? "-" : M.stages[O.stage[j]]}),
          el("td", {cls: "nw", text: dayText(O.close[j])}), el("td", {cls: "num", text: money(O.amount[j])}),
          el("td", {cls: "num", text: pct(O.prob[j])}), el("td", {cls: "num", text: pct(O.adj[j])})));
      });
      ot.appendChild(ob);
      lists.appendChild(ot);
    } else { lists.appendChild(el("p", {cls: "muted", text: "None."})); }
    var tasks = TASKS_BY[i] || [];
    lists.appendChild(el("h3", {text: "Open playbook tasks"}));
    if (tasks.length) {
      var tt = el("table", {cls: "tasks"}, el("thead", null, el("tr", null, el("th", {text: "SLA"}), el("th", {text: "Due"}), el("th", {text: "Task"}))));
      var tbb = el("tbody");
      tasks.forEach(function (j) { tbb.appendChild(taskRow(j, false)); });
      tt.appendChild(tbb);
      lists.appendChild(tt);
    } else { lists.appendChild(el("p", {cls: "muted", text: "None."})); }
  }

  // ------------------------------------------------------------------ book of business

  function taskRow(j, full) {
    var T = D.tasks, sla = T.sla[j];
    var subject = crmLink(T.crm[j], "task", T.id[j], T.subject[j]) || el("span", {text: T.subject[j]});
    var hours = T.hours[j], left = !known(hours) ? "" : hours >= 0 ? " (in " + hoursText(hours) + ")" : " (" + hoursText(-hours) + " overdue)";
    var row = el("tr", {"data-sla": sla, "data-task-id": T.id[j] || ""}, el("td", {cls: "sla-" + sla.replace(/ /g, "-"), text: sla}),
      el("td", {cls: "nw", text: (T.due[j] || "-") + left}), el("td", null, subject));
    if (full) {
      row.appendChild(accountCell(T.acct[j]));
      row.appendChild(el("td", {text: T.playbook[j] === null ? "-" : label(M.playbooks[T.playbook[j]])}));
      row.appendChild(el("td", null, ownerCell(T.owner[j])));
    }
    return row;
  }
  function hoursText(h) { return h < 48 ? h.toFixed(1) + " h" : (h / 24).toFixed(1) + " d"; }

  function renderBook() {
    var T = D.tasks, owners = {}, order = [];
    SEL.forEach(function (i) {
      var o = A.owner[i] === null ? -1 : A.owner[i];
      if (!owners[o]) { owners[o] = {accounts: 0, arr: 0, risk: 0, riskArr: 0, open: 0, breached: 0}; order.push(o); }
      var r = owners[o]; r.accounts++; r.arr += A.arr[i] || 0;
      if (atRisk(i)) { r.risk++; r.riskArr += A.arr[i] || 0; }
    });
    var tasks = [];
    for (var j = 0; j < T.acct.length; j++) {
      if (!INSEL[T.acct[j]]) { continue; }
      tasks.push(j);
      var o = T.owner[j] === null ? -1 : T.owner[j];
      if (owners[o]) { if (T.sla[j] !== "completed") { owners[o].open++; } if (T.sla[j] === "breached") { owners[o].breached++; } }
    }
    order.sort(function (a, b) { return owners[b].breached - owners[a].breached || owners[b].risk - owners[a].risk || owners[b].arr - owners[a].arr; });
    fillBody("#owner-table", order.map(function (o) {
      var r = owners[o], email = o >= 0 ? M.owners[o].email : "";
      return el("tr", {"data-owner": email, "data-accounts": r.accounts, "data-open-tasks": r.open, "data-breached": r.breached},
        el("td", null, ownerCell(o >= 0 ? o : null)), el("td", {cls: "num", text: num(r.accounts)}), el("td", {cls: "num", text: money(r.arr)}),
        el("td", {cls: "num", text: num(r.risk)}), el("td", {cls: "num", text: money(r.riskArr)}), el("td", {cls: "num", text: num(r.open)}),
        el("td", {cls: "num" + (r.breached ? " sla-breached" : ""), text: num(r.breached)}));
    }));
    var pages = Math.max(1, Math.ceil(tasks.length / PAGE));
    if (S.taskPage >= pages) { S.taskPage = pages - 1; }
    fillBody("#task-table", tasks.slice(S.taskPage * PAGE, (S.taskPage + 1) * PAGE).map(function (j) { return taskRow(j, true); }));
    if (!tasks.length) { fillBody("#task-table", [el("tr", null, el("td", {colspan: 6, cls: "muted", text: "No open tasks."}))]); }
    pager("task-pager", tasks.length, S.taskPage, function (p) { S.taskPage = p; renderBook(); });

    var E = D.escalations, esc = [];
    for (j = 0; j < E.acct.length; j++) { if (INSEL[E.acct[j]]) { esc.push(j); } }
    fillBody("#escalation-table", esc.slice(S.escPage * PAGE, (S.escPage + 1) * PAGE).map(function (j) {
      return el("tr", null, el("td", {cls: "nw", text: E.sent[j] || "pending"}), accountCell(E.acct[j]),
        el("td", {text: E.playbook[j] === null ? "-" : label(M.playbooks[E.playbook[j]])}), el("td", {text: E.level[j]}),
        el("td", {text: E.kind[j]}), el("td", {text: E.to[j]}));
    }));
    if (!esc.length) { fillBody("#escalation-table", [el("tr", null, el("td", {colspan: 6, cls: "muted", text: "No escalations."}))]); }
    pager("escalation-pager", esc.length, S.escPage, function (p) { S.escPage = p; renderBook(); });
  }

  function renderQuality() {
    var crm = S.crm === "" ? null : M.crms[+S.crm];
    $all("#view-quality tr[data-crm]").forEach(function (tr) {
      var c = tr.getAttribute("data-crm");
      tr.hidden = !!crm && (c === "salesforce" || c === "hubspot") && c !== crm;
    });
  }

  // ------------------------------------------------------------------ navigation

  function show(view) {
    S.view = view;
    $all("nav.tabs [data-view]").forEach(function (b) { b.classList.toggle("active", b.getAttribute("data-view") === view); });
    $all("section.view").forEach(function (s) { s.classList.toggle("active", s.id === "view-" + view); });
  }

  function follow() {
    var hash = decodeURIComponent(window.location.hash.slice(1));
    if (hash.indexOf("account=") === 0) {
      var i = A.id.indexOf(hash.slice(8));
      if (i >= 0) {
        show("accounts");
        showDetail(i);
        document.getElementById("account-detail").scrollIntoView();
      }
    } else if (hash.indexOf("view=") === 0 && document.getElementById("view-" + hash.slice(5))) {
      show(hash.slice(5));
    }
  }

  function update() {
    select();
    renderExecutive();
    renderTrendCharts();
    renderTrends();
    renderSegments();
    renderRenewals();
    renderAccounts();
    renderBook();
    renderQuality();
  }

  function settle() {
    var jobs = WAIT;
    WAIT = [];
    return jobs.length ? Promise.all(jobs).then(settle) : Promise.resolve();
  }

  function main() {
    SPECS = JSON.parse(document.getElementById("chart-specs").textContent);
    return inflate(document.getElementById("report-data").textContent).then(function (payload) {
      D = payload;
      prepare();
      $all(".renewal-horizon").forEach(function (s) { s.textContent = String(M.renewal_horizon); });
      $all(".stable-within").forEach(function (s) { s.textContent = String(M.stable_within); });
      document.getElementById("adjusted-source").textContent = M.adjusted_source;
      setupFilters();
      setupAccounts();
      $all("nav.tabs [data-view]").forEach(function (b) { b.addEventListener("click", function () { show(b.getAttribute("data-view")); }); });
      window.addEventListener("hashchange", follow);
      update();
      if (M.focus && !window.location.hash) { window.location.hash = "account=" + encodeURIComponent(M.focus); }
      follow();
      return settle();
    }).then(function () {
      document.body.setAttribute("data-ready", "1");
    });
  }

  main().catch(function (err) {
    document.body.setAttribute("data-ready", "error");
    var note = el("div", {cls: "note", text: "The report could not be drawn: " + (err && err.message ? err.message : err)});
    document.querySelector("header").appendChild(note);
    throw err;
  });
})();
