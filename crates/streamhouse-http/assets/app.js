// StreamHouse web console: vanilla JS, hash routing, talks to /api/v1 (docs/http-api.md).
// Server data only ever reaches the DOM as text nodes or attribute values (see h()).
'use strict';
(() => {
  const API = '/api/v1';
  const POLL_MS = 2000;

  // ---------- DOM helpers ----------

  // h('tag', {class, testid, onclick, ...attrs}, ...children): strings become text nodes.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (const c of children.flat(Infinity)) {
      if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'testid') el.dataset.testid = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    if (text != null) el.textContent = String(text);
    return el;
  }
  const enc = encodeURIComponent;
  const topicHref = (name) => '#/topics/' + enc(name);

  // ---------- formatting ----------

  const fmtInt = (n) => (n == null ? '–' : Number(n).toLocaleString('en-US'));
  function fmtBytes(n) {
    if (n == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)) + ' ' + units[i];
  }
  function fmtRate(n) {
    const v = Number(n) || 0;
    if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
    if (v >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    return v >= 100 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1);
  }
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  function fmtTime(ms) {
    const d = new Date(Number(ms));
    if (ms == null || Number.isNaN(d.getTime())) return String(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }
  const localInputValue = (d) =>
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  function fmtAge(ms) {
    if (ms == null) return '–';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const m = Math.floor(ms / 60000);
    return m < 60 ? `${m} min ${Math.round((ms % 60000) / 1000)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  // A key, value or header value with its encoding: null and base64 are marked.
  function blob(value, encoding, testid) {
    if (value == null) return h('span', { class: 'null', testid }, 'null');
    const el = h('span', { class: 'blob', testid, 'data-encoding': encoding || 'utf8' }, value);
    return encoding === 'base64' ? [el, ' ', h('span', { class: 'tag' }, 'base64')] : el;
  }
  function setNum(el, value, fmt = fmtInt) {
    el.textContent = fmt(value);
    el.dataset.value = value == null ? '' : String(value);
  }

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    toString() {
      return this.status ? `${this.message} (${this.code}, HTTP ${this.status})` : this.message;
    }
  }
  async function api(path, { method = 'GET', body } = {}) {
    const init = { method, headers: { accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `Cannot reach the server: ${e.message}`);
    }
    const text = res.status === 204 ? '' : await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      if (res.ok) throw new ApiError(res.status, 'bad_response', 'The server answered with something that is not JSON');
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText || 'Request failed');
    }
    return data;
  }

  // ---------- error banner ----------

  const banner = document.getElementById('error-banner');
  const bannerText = document.getElementById('error-text');
  let bannerSource = null;
  function showError(err, source = 'action') {
    bannerText.textContent = String(err);
    bannerSource = source;
    banner.hidden = false;
  }
  function clearError(source) {
    if (source && bannerSource !== source) return;
    banner.hidden = true;
    bannerText.textContent = '';
    bannerSource = null;
  }
  document.getElementById('error-close').addEventListener('click', () => clearError());
  // An inline error element for a form: hidden until set.
  function inlineError(testid) {
    const el = h('p', { class: 'form-error', role: 'alert', testid, hidden: true });
    el.set = (err) => { el.textContent = err ? String(err) : ''; el.hidden = !err; };
    return el;
  }

  // ---------- building blocks ----------

  // A table whose body is replaced on every poll (the table itself stays, so scroll survives).
  function makeTable(testid, headers, emptyText) {
    const tbody = h('tbody');
    const wrap = h('div', { class: 'table-wrap' },
      h('table', { testid }, h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))), tbody));
    const empty = h('p', { class: 'empty', testid: `${testid}-empty`, hidden: true }, emptyText);
    return {
      el: h('div', {}, wrap, empty),
      set(rows) {
        tbody.replaceChildren(...rows);
        wrap.hidden = rows.length === 0;
        empty.hidden = rows.length > 0;
      },
    };
  }
  const td = (content, attrs) => h('td', attrs, content);
  const num = (content, testid) => h('td', { class: 'num', testid }, content);
  const field = (label, input, hint) =>
    h('label', { class: 'field' }, h('span', { class: 'label' }, label), input, hint ? h('span', { class: 'hint' }, hint) : null);
  // Fills a <select> from `items` ([value, label]) unless it already holds exactly those; keeps the choice.
  function fillSelect(select, items, placeholder) {
    const want = JSON.stringify(items);
    if (select.dataset.items === want) return;
    const keep = select.value || select.dataset.want || '';
    select.replaceChildren(
      ...(placeholder != null ? [h('option', { value: '' }, placeholder)] : []),
      ...items.map(([v, l]) => h('option', { value: v }, l)));
    select.dataset.items = want;
    if (items.some(([v]) => v === keep)) select.value = keep;
  }

  // Line chart of produce and fetch rates over the throughput window, in inline SVG.
  function makeChart(testid, title, producedKey, fetchedKey, fmt) {
    const svg = s('svg', { class: 'chart', role: 'img', 'aria-label': title });
    const legend = h('div', { class: 'legend' });
    const el = h('div', { class: 'card chart-card', testid },
      h('div', { class: 'chart-head' }, h('h3', {}, title), legend), svg);
    function niceMax(v) {
      if (!(v > 0)) return 1;
      const p = 10 ** Math.floor(Math.log10(v));
      return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
    }
    function draw(data) {
      const samples = (data && data.samples) || [];
      const W = Math.max(260, Math.round(svg.clientWidth || el.clientWidth || 600));
      const H = 180, R = 8, T = 10, B = 22;
      svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
      svg.setAttribute('height', H);
      const parts = [];
      const last = samples.length ? samples[samples.length - 1].time_ms : 0;
      const span = Math.max(300000, samples.length ? last - samples[0].time_ms : 0);
      const max = niceMax(Math.max(0, ...samples.map((x) => Math.max(x[producedKey] || 0, x[fetchedKey] || 0))));
      const L = 10 + 6.5 * Math.max(...[0, 0.5, 1].map((f) => fmt(max * f).length));
      const x = (t) => L + ((t - (last - span)) / span) * (W - L - R);
      const y = (v) => T + (1 - v / max) * (H - T - B);
      for (const f of [0, 0.5, 1]) {
        parts.push(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
        parts.push(s('text', { class: 'axis', x: L - 6, y: y(max * f) + 4, 'text-anchor': 'end' }, fmt(max * f)));
      }
      [[last - span, `−${Math.round(span / 60000)} min`, 'start'], [last, 'now', 'end']].forEach(([t, label, anchor]) =>
        parts.push(s('text', { class: 'axis', x: x(t), y: H - 6, 'text-anchor': anchor }, label)));
      for (const [key, cls] of [[producedKey, 'produce'], [fetchedKey, 'fetch']]) {
        if (samples.length) {
          const pts = samples.map((p) => `${x(p.time_ms).toFixed(1)},${y(p[key] || 0).toFixed(1)}`).join(' ');
          parts.push(s('polyline', { class: `line ${cls}`, points: pts, 'data-testid': `${testid}-${cls}` }));
        }
      }
      if (!samples.length) parts.push(s('text', { class: 'axis', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no samples yet'));
      svg.replaceChildren(...parts);
      const now = samples[samples.length - 1] || {};
      legend.replaceChildren(
        h('span', { class: 'key produce' }, `produce ${fmt(now[producedKey] || 0)}/s`),
        h('span', { class: 'key fetch' }, `fetch ${fmt(now[fetchedKey] || 0)}/s`));
    }
    return { el, draw };
  }

  // ---------- pages ----------
  // Each page builds its DOM once into `page` and returns refresh(), which the router polls.
  // Forms are never rebuilt by refresh(), so polling does not clobber what the user types.

  function dashboardPage(page) {
    const defs = [['topics', 'Topics'], ['partitions', 'Partitions'], ['agents', 'Agents (live / total)'],
      ['records', 'Records stored'], ['bytes', 'Bytes stored'], ['groups', 'Consumer groups']];
    const stat = {};
    const grid = h('div', { class: 'stats' }, defs.map(([k, label]) => {
      stat[k] = h('div', { class: 'stat-value', testid: `stat-${k}` }, '–');
      return h('div', { class: 'card stat' }, h('div', { class: 'stat-label' }, label), stat[k]);
    }));
    const who = h('p', { class: 'muted', testid: 'cluster-agent' });
    const rates = h('p', { class: 'muted', testid: 'current-rates' });
    const records = makeChart('chart-records', 'Records / s', 'produce_records_per_sec', 'fetch_records_per_sec', fmtRate);
    const bytes = makeChart('chart-bytes', 'Bytes / s', 'produce_bytes_per_sec', 'fetch_bytes_per_sec', (v) => fmtBytes(Math.round(v)));
    page.append(h('h1', { testid: 'page-title' }, 'Dashboard'), who, grid,
      h('h2', {}, 'Throughput'), rates, h('div', { class: 'charts' }, records.el, bytes.el));
    return async () => {
      const [c, t] = await Promise.all([api('/cluster'), api('/cluster/throughput')]);
      who.textContent = `Served by agent ${c.agent_id} in agent group ${c.agent_group}`;
      setNum(stat.topics, c.topics);
      setNum(stat.partitions, c.partitions);
      stat.agents.textContent = `${fmtInt(c.live_agents)} / ${fmtInt(c.agents)}`;
      stat.agents.dataset.live = c.live_agents;
      stat.agents.dataset.total = c.agents;
      setNum(stat.records, c.records);
      setNum(stat.bytes, c.bytes, fmtBytes);
      setNum(stat.groups, c.consumer_groups);
      rates.textContent = `Last 10 s on this agent: produce ${fmtRate(c.produce_records_per_sec)} records/s ` +
        `(${fmtBytes(Math.round(c.produce_bytes_per_sec || 0))}/s), fetch ${fmtRate(c.fetch_records_per_sec)} records/s ` +
        `(${fmtBytes(Math.round(c.fetch_bytes_per_sec || 0))}/s)`;
      records.draw(t);
      bytes.draw(t);
    };
  }

  function parseConfigs(text) {
    const out = {};
    text.split('\n').forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const eq = line.indexOf('=');
      if (eq <= 0) throw new Error(`Config line ${i + 1}: expected key=value, got "${line}"`);
      out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    });
    return out;
  }

  function topicsPage(page) {
    const count = h('span', { class: 'count', testid: 'topics-count' });
    const list = makeTable('topics-table', ['Name', 'Partitions', 'Records', 'Bytes', 'Agent group', ''], 'No topics yet.');
    const name = h('input', { name: 'name', required: true, placeholder: 'orders', autocomplete: 'off', testid: 'create-topic-name' });
    const parts = h('input', { name: 'partitions', type: 'number', min: 1, placeholder: 'default', testid: 'create-topic-partitions' });
    const configs = h('textarea', { name: 'configs', rows: 3, placeholder: 'retention.ms=604800000', testid: 'create-topic-configs' });
    const submit = h('button', { type: 'submit', class: 'primary', testid: 'create-topic-submit' }, 'Create topic');
    const status = h('p', { class: 'ok-text', role: 'status', testid: 'create-topic-status' });
    const error = inlineError('create-topic-error');
    const form = h('form', { class: 'card form', testid: 'create-topic-form' },
      h('h2', {}, 'Create a topic'),
      h('div', { class: 'row' }, field('Name', name), field('Partitions', parts)),
      field('Configs', configs, 'optional, one key=value a line'),
      h('div', { class: 'actions' }, submit), status, error);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.set(null);
      status.textContent = '';
      try {
        const body = { name: name.value.trim() };
        if (parts.value !== '') body.partitions = Number(parts.value);
        const cfg = parseConfigs(configs.value);
        if (Object.keys(cfg).length) body.configs = cfg;
        submit.disabled = true;
        const t = await api('/topics', { method: 'POST', body });
        form.reset();
        status.textContent = `Created topic ${t.name} with ${t.partitions.length} partition(s).`;
        await refresh();
      } catch (err) {
        error.set(err);
      } finally {
        submit.disabled = false;
      }
    });
    async function remove(topic) {
      if (!window.confirm(`Delete topic "${topic}"? Its records will be gone.`)) return;
      try {
        await api('/topics/' + enc(topic), { method: 'DELETE' });
        status.textContent = `Deleted topic ${topic}.`;
        await refresh();
      } catch (err) {
        showError(err);
      }
    }
    page.append(h('h1', { testid: 'page-title' }, 'Topics ', count), h('div', { class: 'split' }, h('section', {}, list.el), form));
    async function refresh() {
      const topics = await api('/topics');
      count.textContent = `(${topics.length})`;
      count.dataset.value = topics.length;
      list.set(topics.map((t) => h('tr', { testid: 'topic-row', 'data-topic': t.name },
        td(h('a', { href: topicHref(t.name), testid: 'topic-link' }, t.name)),
        num(fmtInt(t.partitions), 'topic-partitions'), num(fmtInt(t.records), 'topic-records'),
        num(fmtBytes(t.bytes)), td(t.agent_group),
        td(h('button', { type: 'button', class: 'danger small', testid: 'topic-delete', onclick: () => remove(t.name) }, 'Delete')))));
    }
    return refresh;
  }

  function topicPage(page, [topic], query) {
    const summary = h('p', { class: 'muted', testid: 'topic-summary' });
    const partitions = makeTable('partitions-table',
      ['Partition', 'Leader agent', 'Leader address', 'Leader epoch', 'Log start', 'High watermark', 'Records', 'Bytes'],
      'No partitions.');
    const configs = makeTable('configs-table', ['Config', 'Value'], 'No configs set: the defaults apply.');

    // Message browser.
    const partition = h('select', { testid: 'browse-partition' });
    partition.dataset.want = query.get('partition') || '0';
    const mode = h('select', { testid: 'browse-mode' }, h('option', { value: 'offset' }, 'From offset'), h('option', { value: 'time' }, 'From time'));
    const offset = h('input', { type: 'number', min: 0, value: query.get('offset') || 0, testid: 'browse-offset' });
    const time = h('input', { type: 'datetime-local', step: 1, value: localInputValue(new Date(Date.now() - 3600e3)), testid: 'browse-time' });
    const limit = h('input', { type: 'number', min: 1, max: 1000, value: 50, testid: 'browse-limit' });
    const offsetField = field('Offset', offset);
    const timeField = field('Time', time);
    timeField.hidden = true;
    mode.addEventListener('change', () => { offsetField.hidden = mode.value !== 'offset'; timeField.hidden = mode.value !== 'time'; });
    const browseSummary = h('p', { class: 'muted', testid: 'browse-summary' });
    const error = inlineError('browse-error');
    const messages = makeTable('messages-table', ['Offset', 'Timestamp', 'Key', 'Value', 'Headers'], 'No messages in this range.');
    messages.el.hidden = true;
    const next = h('button', { type: 'button', disabled: true, testid: 'browse-next' }, 'Next page →');
    const form = h('form', { class: 'form browse', testid: 'browse-form' },
      h('div', { class: 'row' }, field('Partition', partition), field('Start', mode), offsetField, timeField, field('Limit', limit),
        h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', testid: 'browse-submit' }, 'Load'))));
    let nextOffset = null;
    let seq = 0;

    async function load(params) {
      error.set(null);
      if (partition.value === '') { error.set('Pick a partition.'); return; }
      const p = partition.value;
      params.set('limit', String(limit.value || 50));
      const mine = ++seq;
      try {
        const r = await api(`/topics/${enc(topic)}/partitions/${enc(p)}/messages?${params}`);
        if (mine !== seq) return;
        nextOffset = r.next_offset;
        next.disabled = false;
        const msgs = r.messages || [];
        const range = msgs.length ? `offsets ${msgs[0].offset}–${msgs[msgs.length - 1].offset}` : 'no messages';
        browseSummary.textContent = `Partition ${r.partition}: ${range} (log start ${r.log_start_offset}, ` +
          `high watermark ${r.high_watermark}, next page from ${r.next_offset})`;
        messages.el.hidden = false;
        messages.set(msgs.map((m) => h('tr', { testid: 'message-row', 'data-offset': m.offset },
          num(String(m.offset), 'msg-offset'),
          td(fmtTime(m.timestamp), { class: 'nowrap', title: String(m.timestamp), testid: 'msg-timestamp' }),
          td(blob(m.key, m.key_encoding, 'msg-key'), { class: 'mono key' }),
          td(blob(m.value, m.value_encoding, 'msg-value'), { class: 'mono value' }),
          td((m.headers || []).map((hd) => h('span', { class: 'chip', testid: 'msg-header' },
            h('span', { class: 'hk' }, hd.key), ': ', blob(hd.value, hd.encoding))), { class: 'mono' }))));
      } catch (err) {
        if (mine === seq) error.set(err);
      }
    }
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const params = new URLSearchParams();
      if (mode.value === 'time') {
        const ms = new Date(time.value).getTime();
        if (Number.isNaN(ms)) { error.set('Pick a date and time.'); return; }
        params.set('timestamp', String(ms));
      } else {
        params.set('offset', String(Math.max(0, Number(offset.value) || 0)));
      }
      load(params);
    });
    next.addEventListener('click', () => {
      if (nextOffset == null) return;
      mode.value = 'offset';
      mode.dispatchEvent(new Event('change'));
      offset.value = nextOffset;
      load(new URLSearchParams({ offset: String(nextOffset) }));
    });

    page.append(
      h('p', { class: 'crumbs' }, h('a', { href: '#/topics' }, '← Topics')),
      h('h1', { testid: 'page-title' }, topic), summary,
      h('h2', {}, 'Partitions'), partitions.el,
      h('h2', {}, 'Configs'), configs.el,
      h('section', { class: 'card', testid: 'message-browser' },
        h('div', { class: 'chart-head' }, h('h2', {}, 'Messages'),
          h('a', { href: `#/send?topic=${enc(topic)}`, testid: 'topic-send-link' }, 'Send a message →')),
        form, error, browseSummary, messages.el, h('div', { class: 'actions pager' }, next)));

    let first = true;
    return async () => {
      const t = await api('/topics/' + enc(topic));
      summary.textContent = `Agent group ${t.agent_group} · ${t.partitions.length} partition(s) · ` +
        `${fmtInt(t.records)} records · ${fmtBytes(t.bytes)}`;
      partitions.set(t.partitions.map((p) => h('tr', { testid: 'partition-row', 'data-partition': p.partition },
        num(String(p.partition)),
        td(p.leader ? `${p.leader.agent_id} (node ${p.leader.node_id})` : h('span', { class: 'null' }, 'none'), { testid: 'partition-leader' }),
        td(p.leader ? p.leader.address : '–', { class: 'mono' }),
        num(p.leader_epoch == null ? '–' : String(p.leader_epoch)),
        num(fmtInt(p.log_start_offset)), num(fmtInt(p.high_watermark), 'partition-hwm'),
        num(fmtInt(p.records)), num(fmtBytes(p.bytes)))));
      configs.set(Object.entries(t.configs || {}).sort().map(([k, v]) =>
        h('tr', { testid: 'config-row', 'data-config': k }, td(k, { class: 'mono' }), td(v, { class: 'mono' }))));
      fillSelect(partition, t.partitions.map((p) => [String(p.partition), String(p.partition)]));
      if (first && query.has('offset')) load(new URLSearchParams({ offset: offset.value }));
      first = false;
    };
  }

  function agentsPage(page) {
    const list = makeTable('agents-table',
      ['Agent id', 'Node id', 'Address', 'Group', 'Live', 'Heartbeat age', 'Leases', 'Partitions'], 'No agents registered.');
    page.append(h('h1', { testid: 'page-title' }, 'Agents'), list.el);
    return async () => {
      const agents = await api('/agents');
      list.set(agents.map((a) => h('tr', { testid: 'agent-row', 'data-agent-id': a.agent_id },
        td(a.agent_id, { class: 'mono', testid: 'agent-id' }), num(String(a.node_id)), td(a.address, { class: 'mono' }),
        td(a.group), td(h('span', { class: a.live ? 'badge ok' : 'badge bad', testid: 'agent-live' }, a.live ? 'live' : 'down')),
        num(fmtAge(a.last_heartbeat_age_ms)), num(fmtInt(a.leases), 'agent-leases'),
        td((a.partitions || []).map((p) => h('a', { class: 'chip', href: topicHref(p.topic), title: `epoch ${p.epoch}` },
          `${p.topic}/${p.partition}`)), { class: 'chips' }))));
    };
  }

  function groupsPage(page) {
    const list = makeTable('groups-table', ['Group', 'State', 'Protocol type', 'Members', 'Total lag'], 'No consumer groups yet.');
    page.append(h('h1', { testid: 'page-title' }, 'Consumer groups'), list.el);
    return async () => {
      const groups = await api('/groups');
      list.set(groups.map((g) => h('tr', { testid: 'group-row', 'data-group': g.group_id },
        td(h('a', { href: '#/groups/' + enc(g.group_id), testid: 'group-link' }, g.group_id)), td(g.state),
        td(g.protocol_type || '–'), num(fmtInt(g.members)), num(fmtInt(g.total_lag), 'group-lag'))));
    };
  }

  function groupPage(page, [group]) {
    const summary = h('p', { class: 'muted', testid: 'group-summary' });
    const members = makeTable('members-table', ['Member', 'Instance id', 'Client id', 'Client host', 'Assignment'], 'No members.');
    const offsets = makeTable('offsets-table', ['Topic', 'Partition', 'Committed offset', 'High watermark', 'Lag'], 'No committed offsets.');
    page.append(h('p', { class: 'crumbs' }, h('a', { href: '#/groups' }, '← Consumer groups')),
      h('h1', { testid: 'page-title' }, group), summary,
      h('h2', {}, 'Members'), members.el, h('h2', {}, 'Lag per partition'), offsets.el);
    return async () => {
      const g = await api('/groups/' + enc(group));
      summary.textContent = `State ${g.state} · protocol ${g.protocol_type || '–'}/${g.protocol || '–'} · total lag ${fmtInt(g.total_lag)}`;
      members.set(g.members.map((m) => h('tr', { testid: 'member-row', 'data-member': m.member_id },
        td(m.member_id, { class: 'mono' }), td(m.group_instance_id || '–'), td(m.client_id), td(m.client_host, { class: 'mono' }),
        td((m.assignment || []).map((a) => h('span', { class: 'chip', testid: 'member-assignment' }, `${a.topic}/${a.partition}`)), { class: 'chips' }))));
      offsets.set(g.offsets.map((o) => h('tr', { testid: 'offset-row', 'data-topic': o.topic, 'data-partition': o.partition },
        td(h('a', { href: topicHref(o.topic) }, o.topic)), num(String(o.partition)),
        num(fmtInt(o.committed_offset)), num(fmtInt(o.high_watermark)), num(fmtInt(o.lag), 'offset-lag'))));
    };
  }

  function sendPage(page, _args, query) {
    const topic = h('select', { required: true, testid: 'send-topic' });
    topic.dataset.want = query.get('topic') || '';
    const partition = h('input', { type: 'number', min: 0, placeholder: 'optional: the key picks', testid: 'send-partition' });
    const key = h('input', { placeholder: 'optional: no key', autocomplete: 'off', testid: 'send-key' });
    const value = h('textarea', { rows: 4, placeholder: '{"item": 1}', testid: 'send-value' });
    const encoding = h('select', { testid: 'send-encoding' }, h('option', { value: 'utf8' }, 'UTF-8 text'), h('option', { value: 'base64' }, 'base64'));
    const headers = h('div', { class: 'headers', testid: 'send-headers' });
    const addHeader = () => {
      const row = h('div', { class: 'header-row', testid: 'header-row' },
        h('input', { placeholder: 'header key', 'aria-label': 'header key', testid: 'header-key' }),
        h('input', { placeholder: 'header value', 'aria-label': 'header value', testid: 'header-value' }),
        h('button', { type: 'button', class: 'small', 'aria-label': 'remove header', testid: 'header-remove', onclick: () => row.remove() }, '×'));
      headers.append(row);
      row.querySelector('input').focus();
    };
    const submit = h('button', { type: 'submit', class: 'primary', testid: 'send-submit' }, 'Send');
    const error = inlineError('send-error');
    const result = h('div', { class: 'result', role: 'status', testid: 'send-result', hidden: true });
    const form = h('form', { class: 'card form', testid: 'send-form' },
      h('div', { class: 'row' }, field('Topic', topic), field('Partition', partition)),
      field('Key', key), field('Value', value), field('Encoding of key, value and header values', encoding),
      h('div', { class: 'field' }, h('span', { class: 'label' }, 'Headers'), headers,
        h('div', {}, h('button', { type: 'button', class: 'small', testid: 'send-add-header', onclick: addHeader }, '+ Add header'))),
      h('div', { class: 'actions' }, submit), error);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.set(null);
      if (!topic.value) { error.set('Pick a topic.'); return; }
      const body = { topic: topic.value, value: value.value, encoding: encoding.value };
      if (key.value !== '') body.key = key.value;
      if (partition.value !== '') body.partition = Number(partition.value);
      const hs = [...headers.querySelectorAll('.header-row')]
        .map((r) => ({ key: r.children[0].value, value: r.children[1].value })).filter((x) => x.key !== '');
      if (hs.length) body.headers = hs;
      submit.disabled = true;
      try {
        const r = await api('/produce', { method: 'POST', body });
        result.replaceChildren(
          h('div', { class: 'big' }, 'Partition ', h('strong', { testid: 'send-result-partition' }, String(r.partition)),
            ' · Offset ', h('strong', { testid: 'send-result-offset' }, String(r.offset))),
          h('div', { class: 'muted' }, 'Stored in ', h('span', { testid: 'send-result-topic' }, r.topic), ' at ', fmtTime(r.timestamp), ' · ',
            h('a', { href: `${topicHref(r.topic)}?partition=${r.partition}&offset=${r.offset}`, testid: 'send-result-link' }, 'view it')));
        result.dataset.partition = r.partition;
        result.dataset.offset = r.offset;
        result.hidden = false;
      } catch (err) {
        result.hidden = true;
        error.set(err);
      } finally {
        submit.disabled = false;
      }
    });
    page.append(h('h1', { testid: 'page-title' }, 'Send a message'), h('div', { class: 'split' }, form, h('section', {}, result)));
    return async () => {
      const topics = await api('/topics');
      fillSelect(topic, topics.map((t) => [t.name, t.name]), '— pick a topic —');
    };
  }

  // ---------- router ----------

  const routes = [
    [/^\/$/, 'dashboard', dashboardPage],
    [/^\/topics$/, 'topics', topicsPage],
    [/^\/topics\/([^/]+)$/, 'topic', topicPage],
    [/^\/agents$/, 'agents', agentsPage],
    [/^\/groups$/, 'groups', groupsPage],
    [/^\/groups\/([^/]+)$/, 'group', groupPage],
    [/^\/send$/, 'send', sendPage],
  ];
  const nav = document.getElementById('nav');
  const toggle = document.querySelector('.nav-toggle');
  const setMenu = (open) => { nav.classList.toggle('open', open); toggle.setAttribute('aria-expanded', String(open)); };
  toggle.addEventListener('click', () => setMenu(!nav.classList.contains('open')));
  let generation = 0;
  let timer = null;

  function route() {
    const gen = ++generation;
    clearTimeout(timer);
    clearError();
    setMenu(false);
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, qs] = raw.split('?');
    const query = new URLSearchParams(qs || '');
    const root = document.getElementById('app');
    let found = null;
    for (const [re, name, fn] of routes) {
      const m = (path.replace(/\/+$/, '') || '/').match(re);
      if (m) { found = { name, fn, args: m.slice(1).map((x) => { try { return decodeURIComponent(x); } catch { return x; } }) }; break; }
    }
    if (!found) {
      root.replaceChildren(h('div', { class: 'page', testid: 'page-notfound' }, h('h1', {}, 'Not found'),
        h('p', {}, 'No page at ', h('code', {}, raw), '. ', h('a', { href: '#/' }, 'Go to the dashboard'))));
      return;
    }
    const section = found.name === 'topic' ? 'topics' : found.name === 'group' ? 'groups' : found.name;
    for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.route === section);
    const page = h('div', { class: 'page', 'data-page': found.name, testid: `page-${found.name}` });
    root.replaceChildren(page);
    const refresh = found.fn(page, found.args, query);
    const tick = async () => {
      if (gen !== generation) return;
      if (!document.hidden) {
        try {
          await refresh();
          if (gen !== generation) return;
          clearError('poll');
          page.dataset.ready = '1';
        } catch (err) {
          if (gen !== generation) return;
          showError(err, 'poll');
        }
      }
      if (gen === generation) timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }
  window.addEventListener('hashchange', route);
  route();
})();
