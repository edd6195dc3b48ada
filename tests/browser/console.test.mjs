// Real-browser test of the web console (crates/streamhouse-http/assets) against a running
// `streamhouse serve`: STREAMHOUSE_HTTP=http://127.0.0.1:PORT node --test tests/browser/console.test.mjs
// (tests/browser/run.sh starts the server and sets it). Screenshots go to $SCREENSHOT_DIR.
import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = (process.env.STREAMHOUSE_HTTP || '').replace(/\/+$/, '');
if (!BASE) {
  throw new Error('STREAMHOUSE_HTTP is not set: run tests/browser/run.sh, or set it to the http=... address '
    + 'that `streamhouse serve` prints (e.g. http://127.0.0.1:8080)');
}
const SHOTS = path.resolve(process.env.SCREENSHOT_DIR || 'target/console-screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const LAPTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const WAIT = 15000;

const unique = `${Date.now().toString(36)}${process.pid.toString(36)}`;
const TOPIC = `console-test-${unique}`;
const LIVE_TOPIC = `console-live-${unique}`;
const KEY = `key-${unique}`;
const VALUE1 = `value-${unique} ✓ {"n": 1}`;
const VALUE2 = `<b class="x">${unique}</b><img src=x onerror="console.error('xss')">`;
const HEADER = { key: 'trace-id', value: `trace-${unique}` };
const sent = {};

async function apiJson(p, init) {
  const res = await fetch(BASE + '/api/v1' + p, init);
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}
async function apiGet(p) {
  const r = await apiJson(p);
  assert.equal(r.status, 200, `GET /api/v1${p} answered ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body;
}
// Retries `check` (which throws on mismatch) until it passes or `ms` runs out.
async function eventually(check, ms = WAIT) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

let browser;
const tabs = [];
// HTTP errors we provoke on purpose (bad input) show up as console errors in Chromium.
let allowedHttpErrors = null;

async function openTab(viewport) {
  const context = await browser.newContext({ viewport, isMobile: viewport === PHONE, hasTouch: viewport === PHONE });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const tab = { page, errors: [], closed: false };
  const report = (msg) => { if (!tab.closed) tab.errors.push(msg); };
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (allowedHttpErrors && /Failed to load resource/.test(m.text()) && allowedHttpErrors.test(m.text())) return;
    report(`console error: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => report(`uncaught exception: ${e.stack || e}`));
  page.on('requestfailed', (r) => report(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  tabs.push(tab);
  return tab;
}
async function go(page, hash, name) {
  if (page.url().startsWith(BASE + '/')) await page.evaluate((h) => { location.hash = h; }, hash);
  else await page.goto(`${BASE}/${hash}`);
  await waitReady(page, name);
}
async function waitReady(page, name) {
  try {
    await page.locator(`[data-testid="page-${name}"][data-ready]`).waitFor();
  } catch {
    const banner = await page.getByTestId('error-banner').textContent().catch(() => '');
    assert.fail(`page "${name}" did not load its data within ${WAIT} ms (url ${page.url()}); error banner: ${banner?.trim() || '(none)'}`);
  }
}
async function visible(locator, what) {
  try {
    await locator.waitFor({ state: 'visible' });
  } catch {
    assert.fail(`${what}: not visible within ${WAIT} ms (${locator})`);
  }
  return locator;
}
async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}
async function noPageOverflow(page, what) {
  const [sw, w] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(sw <= w + 1, `${what}: the page is ${sw}px wide in a ${w}px viewport (only tables may scroll sideways)`);
}
const rowCount = (page, testid) => page.getByTestId(testid).count();

describe('web console', { concurrency: false }, () => {
  let laptop;

  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    const health = await fetch(BASE + '/healthz').catch((e) => assert.fail(`cannot reach ${BASE}: ${e.message}`));
    assert.equal(health.status, 200, `${BASE}/healthz answered ${health.status}`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    laptop = (await openTab(LAPTOP)).page;
  });

  after(async () => {
    await browser?.close();
  });

  afterEach(() => {
    allowedHttpErrors = null;
    const errors = tabs.flatMap((t) => t.errors.splice(0));
    assert.deepEqual(errors, [], `the page logged errors:\n${errors.join('\n')}`);
  });

  test('dashboard shows the cluster counts and the throughput charts', async () => {
    await go(laptop, '#/', 'dashboard');
    await eventually(async () => {
      const c = await apiGet('/cluster');
      const val = (id, attr = 'data-value') => laptop.getByTestId(id).getAttribute(attr);
      assert.equal(await val('stat-topics'), String(c.topics), 'dashboard topic count');
      assert.equal(await val('stat-partitions'), String(c.partitions), 'dashboard partition count');
      assert.equal(await val('stat-agents', 'data-total'), String(c.agents), 'dashboard agent count');
      assert.equal(await val('stat-agents', 'data-live'), String(c.live_agents), 'dashboard live agent count');
      assert.equal(await val('stat-groups'), String(c.consumer_groups), 'dashboard consumer group count');
      assert.equal(await val('stat-records'), String(c.records), 'dashboard record count');
      assert.match(await laptop.getByTestId('cluster-agent').textContent(), new RegExp(c.agent_id));
    });
    for (const chart of ['chart-records', 'chart-bytes']) {
      await visible(laptop.locator(`[data-testid="${chart}"] svg`), `throughput chart ${chart}`);
    }
    // A line of all-zero rates is flat (an empty box to the browser), so check that each
    // line is drawn with one point per sample rather than that it is "visible".
    await eventually(async () => {
      const t = await apiGet('/cluster/throughput');
      assert.ok(t.samples.length > 0, 'the server has throughput samples after a few seconds');
      for (const id of ['chart-records-produce', 'chart-bytes-fetch']) {
        const points = await laptop.getByTestId(id).getAttribute('points', { timeout: 2000 });
        const n = (points || '').trim().split(/\s+/).filter(Boolean).length;
        assert.ok(Math.abs(n - t.samples.length) <= 2, `${id}: ${n} points for ${t.samples.length} samples`);
      }
    });
    await shot(laptop, 'laptop-dashboard');
  });

  test('topics page lists the topics and creates one through its form', async () => {
    await go(laptop, '#/topics', 'topics');
    const topics = await apiGet('/topics');
    await eventually(async () => assert.equal(await rowCount(laptop, 'topic-row'), topics.length, 'topic rows vs GET /topics'));
    for (const t of topics.slice(0, 5)) {
      await visible(laptop.locator(`[data-testid="topic-row"][data-topic="${t.name}"]`), `row of topic ${t.name}`);
    }
    await laptop.getByTestId('create-topic-name').fill(TOPIC);
    await laptop.getByTestId('create-topic-partitions').fill('3');
    await laptop.getByTestId('create-topic-configs').fill('retention.ms=3600000\n');
    await laptop.waitForTimeout(2500); // a poll round must not clobber what is typed
    assert.equal(await laptop.getByTestId('create-topic-name').inputValue(), TOPIC, 'polling kept the typed name');
    assert.equal(await laptop.getByTestId('create-topic-configs').evaluate((e) => e === document.activeElement), true, 'polling kept the focus');
    await laptop.getByTestId('create-topic-submit').click();
    const row = await visible(laptop.locator(`[data-testid="topic-row"][data-topic="${TOPIC}"]`), `the created topic ${TOPIC} in the list`);
    assert.equal((await row.getByTestId('topic-partitions').textContent()).trim(), '3', 'partitions of the created topic');
    assert.match(await laptop.getByTestId('create-topic-status').textContent(), new RegExp(TOPIC));
    const detail = await apiGet(`/topics/${TOPIC}`);
    assert.equal(detail.partitions.length, 3);
    assert.equal(detail.configs['retention.ms'], '3600000', 'config sent by the form');

    // Live update: a topic created behind the page's back shows up without a reload.
    const r = await apiJson('/topics', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: LIVE_TOPIC, partitions: 1 }) });
    assert.equal(r.status, 201, `POST /api/v1/topics answered ${r.status}: ${JSON.stringify(r.body)}`);
    await visible(laptop.locator(`[data-testid="topic-row"][data-topic="${LIVE_TOPIC}"]`), 'a topic created through the API, without reload');
    await shot(laptop, 'laptop-topics');
  });

  test('topics page shows the error for an invalid topic name', async () => {
    allowedHttpErrors = /status of 4\d\d/;
    await laptop.getByTestId('create-topic-name').fill('bad name!');
    await laptop.getByTestId('create-topic-submit').click();
    const error = await visible(laptop.getByTestId('create-topic-error'), 'error for topic name "bad name!"');
    assert.ok((await error.textContent()).trim().length > 5, 'the error element has a message');
    assert.equal(await laptop.locator('[data-testid="topic-row"][data-topic="bad name!"]').count(), 0);
    assert.equal(await laptop.getByTestId('create-topic-name').inputValue(), 'bad name!', 'the form keeps what was typed');
    await shot(laptop, 'laptop-topics-error');
  });

  test('send page produces messages and shows their partition and offset', async () => {
    await go(laptop, '#/send', 'send');
    await laptop.locator(`[data-testid="send-topic"] option[value="${TOPIC}"]`).waitFor({ state: 'attached' })
      .catch(() => assert.fail(`topic ${TOPIC} is not offered in the send form's topic list`));
    await laptop.getByTestId('send-topic').selectOption(TOPIC);
    await laptop.getByTestId('send-key').fill(KEY);
    await laptop.getByTestId('send-value').fill(VALUE1);
    await laptop.getByTestId('send-add-header').click();
    await laptop.getByTestId('header-key').fill(HEADER.key);
    await laptop.getByTestId('header-value').fill(HEADER.value);
    await laptop.getByTestId('send-submit').click();
    const result = await visible(laptop.getByTestId('send-result'), 'the send result');
    sent.partition = Number(await result.getByTestId('send-result-partition').textContent());
    sent.offset = Number(await result.getByTestId('send-result-offset').textContent());
    assert.ok(Number.isInteger(sent.partition) && sent.partition >= 0 && sent.partition < 3, `partition shown: ${sent.partition}`);
    assert.ok(Number.isInteger(sent.offset) && sent.offset >= 0, `offset shown: ${sent.offset}`);
    await shot(laptop, 'laptop-send');

    // A second record with the same key: the key picks the same partition, the next offset.
    await laptop.getByTestId('header-remove').click();
    await laptop.getByTestId('send-value').fill(VALUE2);
    await laptop.getByTestId('send-submit').click();
    await eventually(async () => assert.equal(await result.getAttribute('data-offset'), String(sent.offset + 1), 'offset of the second record'));
    assert.equal(await result.getAttribute('data-partition'), String(sent.partition), 'partition of the second record (same key)');

    // The record as the API reads it back.
    const m = await apiGet(`/topics/${TOPIC}/partitions/${sent.partition}/messages?offset=${sent.offset}&limit=1`);
    assert.equal(m.messages[0]?.value, VALUE1, 'record read back through the API');
    assert.equal(m.messages[0]?.key, KEY);
  });

  test('send page shows the error for a partition that does not exist', async () => {
    allowedHttpErrors = /status of 4\d\d/;
    await laptop.getByTestId('send-partition').fill('99');
    await laptop.getByTestId('send-submit').click();
    await visible(laptop.getByTestId('send-error'), 'error for partition 99');
    assert.ok(await laptop.getByTestId('send-result').isHidden(), 'no result shown for a failed send');
    await shot(laptop, 'laptop-send-error');
    await laptop.getByTestId('send-partition').fill('');
  });

  test('topic page shows partitions and configs, and the browser finds the sent messages', async () => {
    assert.ok(sent.offset != null, 'the send test must have run');
    await go(laptop, `#/topics/${TOPIC}`, 'topic');
    assert.equal((await laptop.getByTestId('page-title').textContent()).trim(), TOPIC);
    await eventually(async () => assert.equal(await rowCount(laptop, 'partition-row'), 3, 'partition rows'));
    const prow = laptop.locator(`[data-testid="partition-row"][data-partition="${sent.partition}"]`);
    await eventually(async () => assert.equal((await prow.getByTestId('partition-hwm').textContent()).trim(), String(sent.offset + 2), 'high watermark of the sent partition'));
    await visible(laptop.locator('[data-testid="config-row"][data-config="retention.ms"]'), 'the retention.ms config row');

    await laptop.getByTestId('browse-partition').selectOption(String(sent.partition));
    await laptop.getByTestId('browse-mode').selectOption('offset');
    await laptop.getByTestId('browse-offset').fill('0');
    await laptop.getByTestId('browse-submit').click();
    const row = await visible(laptop.locator(`[data-testid="message-row"][data-offset="${sent.offset}"]`), `message at offset ${sent.offset}`);
    assert.equal((await row.getByTestId('msg-offset').textContent()).trim(), String(sent.offset));
    assert.equal(await row.getByTestId('msg-key').textContent(), KEY, 'key shown in the message browser');
    assert.equal(await row.getByTestId('msg-value').textContent(), VALUE1, 'value shown in the message browser');
    assert.equal(await row.getByTestId('msg-header').textContent(), `${HEADER.key}: ${HEADER.value}`, 'header shown');
    assert.match(await row.getByTestId('msg-timestamp').textContent(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/, 'human-readable timestamp');
    const row2 = laptop.locator(`[data-testid="message-row"][data-offset="${sent.offset + 1}"]`);
    assert.equal(await row2.getByTestId('msg-value').textContent(), VALUE2, 'markup in a value is shown as text');
    assert.equal(await laptop.locator('[data-testid="messages-table"] b, [data-testid="messages-table"] img').count(), 0, 'a value became HTML');
    await shot(laptop, 'laptop-topic');

    // Paging: one record a page, then "next page".
    await laptop.getByTestId('browse-limit').fill('1');
    await laptop.getByTestId('browse-offset').fill(String(sent.offset));
    await laptop.getByTestId('browse-submit').click();
    await eventually(async () => assert.deepEqual(
      await laptop.getByTestId('message-row').evaluateAll((rs) => rs.map((r) => r.dataset.offset)), [String(sent.offset)]));
    await laptop.getByTestId('browse-next').click();
    await eventually(async () => assert.deepEqual(
      await laptop.getByTestId('message-row').evaluateAll((rs) => rs.map((r) => r.dataset.offset)), [String(sent.offset + 1)], 'next page'));

    // From a time: an hour ago finds the first record.
    const d = new Date(Date.now() - 3600e3);
    const p2 = (n) => String(n).padStart(2, '0');
    await laptop.getByTestId('browse-mode').selectOption('time');
    await laptop.getByTestId('browse-time').fill(`${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}T${p2(d.getHours())}:${p2(d.getMinutes())}`);
    await laptop.getByTestId('browse-limit').fill('10');
    await laptop.getByTestId('browse-submit').click();
    await visible(laptop.locator(`[data-testid="message-row"][data-offset="${sent.offset}"]`), 'message found from a time an hour ago');
  });

  test('agents page lists the agents with their leases', async () => {
    await go(laptop, '#/agents', 'agents');
    const [agents, cluster] = await Promise.all([apiGet('/agents'), apiGet('/cluster')]);
    assert.ok(agents.length >= 1, 'GET /agents lists at least one agent');
    await eventually(async () => assert.equal(await rowCount(laptop, 'agent-row'), agents.length, 'agent rows vs GET /agents'));
    const me = await visible(laptop.locator(`[data-testid="agent-row"][data-agent-id="${cluster.agent_id}"]`), `row of the serving agent ${cluster.agent_id}`);
    assert.equal((await me.getByTestId('agent-live').textContent()).trim(), 'live', 'the serving agent is live');
    await eventually(async () => {
      const a = (await apiGet('/agents')).find((x) => x.agent_id === cluster.agent_id);
      assert.equal((await me.getByTestId('agent-leases').textContent()).trim(), String(a.leases), 'lease count');
    });
    await shot(laptop, 'laptop-agents');
  });

  test('groups page lists the consumer groups and their members and lag', async () => {
    await go(laptop, '#/groups', 'groups');
    const groups = await apiGet('/groups');
    if (groups.length === 0) {
      await visible(laptop.getByTestId('groups-table-empty'), 'the "no consumer groups" note');
      await shot(laptop, 'laptop-groups');
      return;
    }
    await eventually(async () => assert.equal(await rowCount(laptop, 'group-row'), groups.length, 'group rows vs GET /groups'));
    await shot(laptop, 'laptop-groups');
    const g = groups[0];
    await laptop.locator(`[data-testid="group-row"][data-group="${g.group_id}"]`).getByTestId('group-link').click();
    await waitReady(laptop, 'group');
    const detail = await apiGet(`/groups/${encodeURIComponent(g.group_id)}`);
    assert.equal((await laptop.getByTestId('page-title').textContent()).trim(), g.group_id);
    await eventually(async () => {
      assert.equal(await rowCount(laptop, 'member-row'), detail.members.length, 'member rows');
      assert.equal(await rowCount(laptop, 'offset-row'), detail.offsets.length, 'lag rows');
    });
    await shot(laptop, 'laptop-group');
  });

  test('phone: the menu works and the pages fit the screen', async () => {
    const phoneTab = await openTab(PHONE);
    const phone = phoneTab.page;
    await go(phone, '#/', 'dashboard');
    await noPageOverflow(phone, 'dashboard on a phone');
    assert.ok(await phone.getByTestId('nav-topics').isHidden(), 'the nav links fold behind the menu button on a phone');
    await shot(phone, 'phone-dashboard');
    await phone.getByTestId('nav-toggle').click();
    await visible(phone.getByTestId('nav-topics'), 'nav link after opening the menu');
    await shot(phone, 'phone-menu');
    await phone.getByTestId('nav-topics').click();
    await waitReady(phone, 'topics');
    assert.ok(await phone.getByTestId('nav-topics').isHidden(), 'the menu closes after navigating');
    await visible(phone.locator(`[data-testid="topic-row"][data-topic="${TOPIC}"]`), 'the created topic on a phone');
    await noPageOverflow(phone, 'topics on a phone');
    await shot(phone, 'phone-topics');
    await go(phone, `#/topics/${TOPIC}?partition=${sent.partition}&offset=0`, 'topic');
    await visible(phone.locator(`[data-testid="message-row"][data-offset="${sent.offset}"]`), 'the sent message on a phone');
    await noPageOverflow(phone, 'topic page on a phone');
    await shot(phone, 'phone-topic');
    for (const [hash, name] of [['#/agents', 'agents'], ['#/groups', 'groups'], ['#/send', 'send']]) {
      await go(phone, hash, name);
      await noPageOverflow(phone, `${name} on a phone`);
      await shot(phone, `phone-${name}`);
    }
    phoneTab.closed = true; // an in-flight poll aborted by closing is no error
    await phone.context().close();
  });

  test('topics page deletes a topic after confirmation', async () => {
    await go(laptop, '#/topics', 'topics');
    const row = await visible(laptop.locator(`[data-testid="topic-row"][data-topic="${LIVE_TOPIC}"]`), `row of ${LIVE_TOPIC}`);
    laptop.once('dialog', (d) => d.dismiss());
    await row.getByTestId('topic-delete').click();
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await apiJson(`/topics/${LIVE_TOPIC}`)).status, 200, 'dismissing the confirmation keeps the topic');
    laptop.once('dialog', (d) => d.accept());
    await row.getByTestId('topic-delete').click();
    await laptop.locator(`[data-testid="topic-row"][data-topic="${LIVE_TOPIC}"]`).waitFor({ state: 'detached' })
      .catch(() => assert.fail(`${LIVE_TOPIC} is still listed after deleting it`));
    assert.equal((await apiJson(`/topics/${LIVE_TOPIC}`)).status, 404, 'the deleted topic is gone from the API');
  });
});
