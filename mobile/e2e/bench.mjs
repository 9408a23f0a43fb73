// The web app's own time on top of the server's answers, in Debian's chromium (run by bench/app.py).
// For each real image: choose the file -> image on screen; draw a box -> first outline; redraw it
// (jittered) -> each re-prompt's outline; classify -> the label. Each is reported with the API calls
// it waited for (the browser's own network timings) and the difference: what the app adds.
// env: BASE_URL, USERNAME, PASSWORD, CASES (JSON [{path, box, width}]), REPROMPTS. Prints JSON last.
import { launch } from './browser.mjs';

const env = (name) => process.env[name] ?? (() => { throw new Error(`set ${name}`); })();
const BASE = env('BASE_URL');
const CASES = JSON.parse(env('CASES'));
const REPROMPTS = Number(process.env.REPROMPTS ?? 3);

const { browser, page: open, outside } = await launch();
const page = await open({ width: 1024, height: 1366 });
page.setDefaultTimeout(120_000);

// Every finished API call: what it was, when it started and how long it took (ms), its JSON when small.
const calls = [];
page.on('requestfinished', async (req) => {
  const url = new URL(req.url());
  if (!url.pathname.startsWith('/v1/')) return;
  const t = req.timing();
  const entry = { method: req.method(), path: url.pathname, start: t.startTime, ms: t.responseEnd };
  calls.push(entry);
  if (url.pathname.endsWith('/segment') || (req.method() === 'POST' && url.pathname === '/v1/analyses')) {
    const res = await req.response();
    entry.timings = (await res.json().catch(() => ({}))).timings_ms;
  }
});
// requestfinished can reach us just after the screen changed: settle before reading the calls
const since = async (t0) => {
  await page.waitForTimeout(150);
  return calls.filter((c) => c.start >= t0 - 5);
};
const waited = (list, match) => list.filter(match).reduce((n, c) => n + c.ms, 0);

const byTest = (id) => page.getByTestId(id).first();
const imgLoaded = (id) => page.waitForFunction((testId) => {
  const img = document.querySelector(`[data-testid="${testId}"] img`);
  return img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null;
}, id, { polling: 'raf' });
const newOverlay = (previous) => page.waitForFunction((prev) => {
  const img = document.querySelector('[data-testid="canvas-overlay-0"] img');
  const src = img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null;
  return src && src !== prev ? src : null;
}, previous, { polling: 'raf' });

async function drag(box, width) {
  const frame = await byTest('image-canvas').boundingBox();
  const s = frame.width / width;
  await page.mouse.move(frame.x + box[0] * s, frame.y + box[1] * s);
  await page.mouse.down();
  await page.mouse.move(frame.x + ((box[0] + box[2]) / 2) * s, frame.y + ((box[1] + box[3]) / 2) * s, { steps: 3 });
  await page.mouse.move(frame.x + box[2] * s, frame.y + box[3] * s, { steps: 3 });
  await page.mouse.up();
}

const jitter = (box, k) => {
  const w = box[2] - box[0];
  const h = box[3] - box[1];
  const d = [0.04, -0.03, 0.05, -0.05][k % 4];
  return [box[0] - d * w, box[1] + d * h, box[2] + d * w, box[3] - d * h].map(Math.round);
};

await page.goto(`${BASE}/app`);
await byTest('username').fill(env('USERNAME'));
await byTest('password').fill(env('PASSWORD'));
await byTest('sign-in').click();
await byTest('pick-file').waitFor();

const rows = [];
for (const c of CASES) {
  await page.goto(`${BASE}/app/new`);
  await byTest('pick-file').waitFor();
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), byTest('pick-file').click()]);
  let t0 = Date.now();
  let n0 = Date.now();
  await chooser.setFiles(c.path);
  await imgLoaded('canvas-image');
  const shown = Date.now() - t0;
  const image = { total: shown, api: waited(await since(n0), (x) => x.path === '/v1/images' || x.path.endsWith('/image.png')) };

  const outlines = [];
  let previous = null;
  for (let k = 0; k <= REPROMPTS; k++) {
    const box = k === 0 ? c.box : jitter(c.box, k);
    n0 = Date.now();
    await drag(box, c.width);
    // the clock runs from the release: mouse moves are the user's time, not the app's
    const released = Date.now();
    previous = await (await newOverlay(previous)).jsonValue();
    const total = Date.now() - released;
    const seg = (await since(n0)).filter((x) => x.path.endsWith('/segment'));
    outlines.push({ total, api: waited(seg, () => true), server: seg.at(-1)?.timings ?? null });
  }

  n0 = Date.now();
  t0 = Date.now();
  const marks = {};
  const onResponse = (res) => { const u = new URL(res.url()); if (u.pathname.startsWith('/v1/')) marks[`${res.request().method()} ${u.pathname.replace(/[0-9a-f]{32}/, 'ID')}`] = Date.now() - t0; };
  page.on('response', onResponse);
  await byTest('classify').click();
  await page.waitForURL(/analysis/);
  marks.url = Date.now() - t0;
  await byTest('result-label').waitFor();
  const total = Date.now() - t0;
  marks.label = total;
  page.off('response', onResponse);
  if (process.env.DEBUG_MARKS) console.error(JSON.stringify(marks));
  const post = (await since(n0)).filter((x) => x.method === 'POST' && x.path === '/v1/analyses');
  const classify = {
    total,
    api: waited(await since(n0), (x) => (x.method === 'POST' && x.path === '/v1/analyses') || (x.method === 'GET' && /^\/v1\/analyses\/[0-9a-f]+$/.test(x.path))),
    server: post.at(-1)?.timings ?? null,
  };
  rows.push({ image: c.path.split('/').pop(), show_image: image, first_outline: outlines[0], reprompts: outlines.slice(1), classify });
  console.error(`${rows.at(-1).image}: image ${image.total} ms, outline ${outlines[0].total} ms, classify ${classify.total} ms`);
}
await browser.close();
console.log(JSON.stringify({ rows, outside }));
