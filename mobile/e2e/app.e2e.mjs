// End to end in a real browser against a real `branet serve` (started by tests/test_app_e2e.py):
// sign in with a password, upload a real BUSI image, draw a box, see the outline, classify, find the
// result in history, open it, delete it; a wrong password and an oversized file give their messages.
// Phone (light) and tablet (dark) viewports; a screenshot of every step in $OUT. Then /docs and /redoc, offline.
//
// With AUTH=firebase (a server with Firebase sign-in, against the emulators): the phone flow signs up with
// USERNAME as the e-mail through the Firebase SDK, sees the e-mail unverified on the profile, and signs in
// again after signing out; the tablet flow and the docs are the local run's.
//
// env: BASE_URL, USERNAME, PASSWORD, IMAGE (PNG path), IMAGE_W, IMAGE_H, BOX ("x0,y0,x1,y1" in image
// pixels), BIG_FILE (a file over the upload limit), OUT (screenshot folder), AUTH (local or firebase)
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { env, launch } from './browser.mjs';

const BASE = env('BASE_URL');
const OUT = env('OUT');
const [X0, Y0, X1, Y1] = env('BOX').split(',').map(Number);
const IMAGE_W = Number(env('IMAGE_W'));
const FIREBASE = process.env.AUTH === 'firebase';
mkdirSync(OUT, { recursive: true });

const VIEWPORTS = { phone: { width: 390, height: 844 }, tablet: { width: 1024, height: 1366 } };
const TIMEOUT = 60_000;

async function step(page, name, fn) {
  const started = Date.now();
  try {
    await fn();
  } finally {
    await page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });
  }
  console.log(`ok ${name} (${Date.now() - started} ms)`);
}

const byTest = (page, id) => page.getByTestId(id).first();

async function chooseFile(page, path) {
  const [chooser] = await Promise.all([page.waitForEvent('filechooser', { timeout: TIMEOUT }), byTest(page, 'pick-file').click()]);
  await chooser.setFiles(path);
}

async function drag(page, box) {
  const canvas = byTest(page, 'image-canvas');
  await canvas.scrollIntoViewIfNeeded();
  const frame = await canvas.boundingBox();
  const scale = frame.width / IMAGE_W;
  const at = (x, y) => [frame.x + x * scale, frame.y + y * scale];
  await page.mouse.move(...at(box[0], box[1]));
  await page.mouse.down();
  await page.mouse.move(...at((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), { steps: 4 });
  await page.mouse.move(...at(box[2], box[3]), { steps: 4 });
  await page.mouse.up();
}

async function appFlow(open, label, viewport, colorScheme) {
  const page = await open(viewport, colorScheme);
  page.setDefaultTimeout(TIMEOUT);
  const s = (name, fn) => step(page, `${label}-${name}`, fn);

  await s('01-sign-in', async () => {
    await page.goto(`${BASE}/app`);
    await byTest(page, 'username').waitFor();
    assert.equal(await byTest(page, 'server-input').inputValue(), BASE);
    await byTest(page, 'check-server').click();
    await byTest(page, 'server-ok').waitFor();
  });
  await s('02-wrong-password', async () => {
    await byTest(page, 'username').fill(env('USERNAME'));
    await byTest(page, 'password').fill('not-the-password');
    await byTest(page, 'sign-in').click();
    await page.getByText('Wrong user name or password.').waitFor();
  });
  await s(FIREBASE ? '03-signed-up' : '03-signed-in', async () => {
    await byTest(page, 'password').fill(env('PASSWORD'));
    await byTest(page, FIREBASE ? 'sign-up' : 'sign-in').click();
    await byTest(page, 'pick-file').waitFor();
  });
  await s('04-oversized-file', async () => {
    await chooseFile(page, env('BIG_FILE'));
    await page.getByText('The file is larger than 10 MB.').waitFor();
  });
  await s('05-uploaded', async () => {
    await chooseFile(page, env('IMAGE'));
    await byTest(page, 'canvas-image').waitFor();
    await page.waitForFunction(() => {
      const img = document.querySelector('[data-testid="canvas-image"] img') ?? document.querySelector('[data-testid="canvas-image"]');
      return img && img.getBoundingClientRect().width > 50;
    });
  });
  await s('07-box-and-outline', async () => {
    await drag(page, [X0, Y0, X1, Y1]);
    await byTest(page, 'canvas-box').waitFor();
    await byTest(page, 'canvas-overlay-0').waitFor();
    await byTest(page, 'segmentation-info').waitFor();
  });
  await s('08-classified', async () => {
    await byTest(page, 'classify').click();
    await byTest(page, 'result-label').waitFor();
    const label = await byTest(page, 'result-label').innerText();
    assert.match(label, /^(Benign|Malignant)$/);
    assert.equal(await byTest(page, 'notice').innerText(), 'Research use only. Not for clinical diagnosis.');
    await byTest(page, 'threshold-mark').waitFor();
    await page.getByTestId('model-quality').filter({ hasText: /AUC 0\.\d\d \(95% CI/ }).waitFor();
    await byTest(page, 'heatmap-toggle').click();
    await byTest(page, 'heatmap-image').waitFor();
  });
  await s('09-history', async () => {
    await page.goto(`${BASE}/app/history`);
    await byTest(page, 'history-item').waitFor();
    assert.equal(await page.getByTestId('history-item').count(), 1);
  });
  await s('10-detail', async () => {
    await byTest(page, 'history-item').click();
    await byTest(page, 'result-label').waitFor();
    await byTest(page, 'canvas-overlay-0').waitFor();
  });
  await s('11-deleted', async () => {
    await byTest(page, 'delete').click();
    await byTest(page, 'confirm-delete').click();
    await byTest(page, 'history-empty').waitFor();
  });
  await s('12-profile-in-spanish', async () => {
    await page.goto(`${BASE}/app/profile`);
    await byTest(page, 'profile-user').waitFor();
    assert.match(await byTest(page, 'profile-user').innerText(), new RegExp(env('USERNAME')));
    if (FIREBASE) assert.equal(await byTest(page, 'profile-email-verified').innerText(), 'E-mail not verified yet');
    await byTest(page, 'language-es').click();
    await page.getByText('Cerrar sesión').waitFor();
    assert.equal(await byTest(page, 'notice').innerText(), 'Solo para investigación. No apto para diagnóstico clínico.');
  });
  await s('13-signed-out', async () => {
    await byTest(page, 'language-en').click();
    await byTest(page, 'sign-out').click();
    await byTest(page, 'username').waitFor();
  });
  if (FIREBASE) {
    await s('14-signed-in-again', async () => {
      await byTest(page, 'username').fill(env('USERNAME'));
      await byTest(page, 'password').fill(env('PASSWORD'));
      await byTest(page, 'sign-in').click();
      await byTest(page, 'pick-file').waitFor();
      await page.goto(`${BASE}/app/history`);
      await byTest(page, 'history-empty').waitFor();
    });
  }
  await page.context().close();
}

async function docs(open) {
  const page = await open(VIEWPORTS.tablet);
  page.setDefaultTimeout(TIMEOUT);
  await step(page, 'docs-swagger', async () => {
    await page.goto(`${BASE}/docs`);
    await page.locator('.opblock-summary-path', { hasText: '/v1/analyses' }).first().waitFor();
    const healthz = page.locator('.opblock-summary', { hasText: '/healthz' }).first();
    await healthz.click();
    await page.getByRole('button', { name: 'Try it out' }).first().click();
    await page.getByRole('button', { name: 'Execute' }).first().click();
    await page.locator('.response-col_status', { hasText: '200' }).first().waitFor();
  });
  await step(page, 'docs-redoc', async () => {
    await page.goto(`${BASE}/redoc`);
    await page.getByText('/v1/analyses').first().waitFor();
  });
  await page.context().close();
}

const { browser, page: open, outside } = await launch();
try {
  await appFlow(open, FIREBASE ? 'firebase-phone' : 'phone', VIEWPORTS.phone, 'light');
  if (!FIREBASE) {
    await appFlow(open, 'tablet', VIEWPORTS.tablet, 'dark');
    await docs(open);
  }
} finally {
  await browser.close();
}
assert.deepEqual(outside, [], `requests to outside addresses: ${outside.join(', ')}`);
console.log('e2e passed');
