// The web app's own time on top of the server's answers, in Debian's chromium (run by bench/app.py).
// For each real image: choose the file -> image on screen; draw a box -> first outline; redraw it
// (jittered) -> each re-prompt's outline; classify -> the label. Everything is timed on the page's
// own clock (performance.now(): the user's input event, the frame where the result is on screen, and
// the Resource Timing of each API call it waited for), so the driver's overhead is not counted.
// env: BASE_URL, USERNAME, PASSWORD, CASES (JSON [{path, box, width}]), REPROMPTS. Prints JSON last.
import { launch } from './browser.mjs';

const env = (name) => process.env[name] ?? (() => { throw new Error(`set ${name}`); })();
const BASE = env('BASE_URL');
const CASES = JSON.parse(env('CASES'));
const REPROMPTS = Number(process.env.REPROMPTS ?? 3);

const { browser, page: open, outside } = await launch();
const page = await open({ width: 1024, height: 1366 });
page.setDefaultTimeout(120_000);
// The last pointer release and click, as the page saw them (event.timeStamp is on performance.now()'s clock).
await page.addInitScript(() => {
  for (const type of ['pointerup', 'mouseup', 'click']) {
    document.addEventListener(type, (e) => { window.__input = e.timeStamp; }, true);
  }
});

const byTest = (id) => page.getByTestId(id).first();
const now = () => page.evaluate(() => performance.now());
/** The page-clock time of the first animation frame where `testId`'s image is loaded (and differs from `previous`). */
const imageShown = (testId, previous = null) => page.waitForFunction(([id, prev]) => {
  const img = document.querySelector(`[data-testid="${id}"] img`);
  const src = img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null;
  return src && src !== prev ? { at: performance.now(), src } : null;
}, [testId, previous], { polling: 'raf' }).then((h) => h.jsonValue());
const textShown = (testId) => page.waitForFunction((id) => (document.querySelector(`[data-testid="${id}"]`) ? performance.now() : null),
  testId, { polling: 'raf' }).then((h) => h.jsonValue());
/** The API calls that started after `t0` (page clock): path, method-less name, start, duration. */
const apiCalls = (t0) => page.evaluate((from) => performance.getEntriesByType('resource')
  .filter((e) => e.startTime >= from && new URL(e.name).pathname.startsWith('/v1/'))
  .map((e) => ({ path: new URL(e.name).pathname, ms: e.responseEnd - e.startTime })), t0);
const sum = (calls, match) => calls.filter(match).reduce((n, c) => n + c.ms, 0);

// Server timings come from the answers themselves.
const answers = [];
page.on('response', async (res) => {
  const path = new URL(res.url()).pathname;
  if (path.endsWith('/segment') || (res.request().method() === 'POST' && path === '/v1/analyses')) {
    answers.push({ path, timings: (await res.json().catch(() => ({}))).timings_ms ?? null });
  }
});

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
  await page.evaluate(() => performance.setResourceTimingBufferSize(10_000));
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), byTest('pick-file').click()]);
  let t0 = await now(); // just before the file is handed over: the driver's round trip counts against the app
  await chooser.setFiles(c.path);
  let shown = await imageShown('canvas-image');
  let calls = await apiCalls(t0);
  const image = { total: shown.at - t0, api: sum(calls, (x) => x.path === '/v1/images' || x.path.endsWith('/image.png')) };

  const outlines = [];
  let previous = null;
  for (let k = 0; k <= REPROMPTS; k++) {
    const before = answers.length;
    await drag(k === 0 ? c.box : jitter(c.box, k), c.width);
    t0 = await page.evaluate(() => window.__input); // the release: the moves before it are the user's time
    shown = await imageShown('canvas-overlay-0', previous);
    previous = shown.src;
    calls = await apiCalls(t0);
    while (answers.length === before) await page.waitForTimeout(10);
    outlines.push({ total: shown.at - t0, api: sum(calls, (x) => x.path.endsWith('/segment')), server: answers.at(-1).timings });
  }

  const before = answers.length;
  await byTest('classify').click();
  t0 = await page.evaluate(() => window.__input);
  const labelAt = await textShown('result-label');
  calls = await apiCalls(t0);
  while (answers.length === before) await page.waitForTimeout(10);
  const classify = {
    total: labelAt - t0,
    api: sum(calls, (x) => x.path === '/v1/analyses' || /^\/v1\/analyses\/[0-9a-f]+$/.test(x.path)),
    server: answers.at(-1).timings,
  };
  rows.push({ image: c.path.split('/').pop(), show_image: image, first_outline: outlines[0], reprompts: outlines.slice(1), classify });
  console.error(`${rows.at(-1).image}: image ${image.total.toFixed(0)} ms, outline ${outlines[0].total.toFixed(0)} ms, classify ${classify.total.toFixed(0)} ms`);
}
await browser.close();
console.log(JSON.stringify({ rows, outside }));
