// Automatic lesion finding end to end in a real browser against a real `branet serve` with the real
// lesion localiser (started by tests/test_app_auto_e2e.py, which first asks the API what the served
// localiser says about each image and passes that here, so the screens are checked against it):
// upload a BUSI image, draw nothing, "Find lesion automatically", see the result say it was found
// automatically with the localiser's score and threshold, the candidates' numbered boxes; pick another
// candidate (when there is one), come back to the first, go back to drawing a box; then a normal image
// where no lesion is found: the calm message with its score, and one tap to draw a box instead.
//
// env: BASE_URL, USERNAME, PASSWORD, OUT (screenshot folder), LESION_IMAGE, LESION_W, LESION_SCORE,
// LESION_THRESHOLD, FINDER_NAME (the localiser's name), LESION_CANDIDATES (JSON [[x0,y0,x1,y1,score], ...] as the API ranked them),
// NORMAL_IMAGE, NORMAL_W, NO_LESION_MESSAGE (what the app must say for it), VIEWPORT (phone or tablet)
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { env, launch } from './browser.mjs';

const BASE = env('BASE_URL');
const OUT = env('OUT');
const CANDIDATES = JSON.parse(env('LESION_CANDIDATES'));
const VIEWPORTS = { phone: { width: 390, height: 844 }, tablet: { width: 1024, height: 1366 } };
const LABEL = process.env.VIEWPORT ?? 'phone';
const TIMEOUT = 60_000;
mkdirSync(OUT, { recursive: true });

const { browser, page: open, outside } = await launch();
const page = await open(VIEWPORTS[LABEL], 'light');
page.setDefaultTimeout(TIMEOUT);
// screens below the top of the stack stay in the page, hidden: only the visible one counts
const byTest = (id) => page.locator(`[data-testid="${id}"]:visible`).first();
const count = (id) => page.locator(`[data-testid="${id}"]:visible`).count();

async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
  } finally {
    await page.screenshot({ path: join(OUT, `auto-${LABEL}-${name}.png`), fullPage: true });
  }
  console.log(`ok ${name} (${Date.now() - started} ms)`);
}

async function upload(path) {
  await page.goto(`${BASE}/app/new`);
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), byTest('pick-file').click()]);
  await chooser.setFiles(path);
  await byTest('canvas-image').waitFor();
  await page.waitForFunction(() => {
    const img = document.querySelector('[data-testid="canvas-image"] img') ?? document.querySelector('[data-testid="canvas-image"]');
    return img && img.getBoundingClientRect().width > 50;
  });
}

/** The numbered boxes over the image, in the order of their numbers. */
async function candidateBoxes() {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid^="candidate-box-"]')].filter((el) => el.checkVisibility()).map((el) => ({
    id: el.getAttribute('data-testid'), text: el.textContent, rect: el.getBoundingClientRect().toJSON(),
  })));
}

const fixed = (v) => Number(v).toFixed(2);
/** A score and its threshold as the app writes them (src/api/auto.ts scorePair: more decimals when two look equal). */
function pair(score, threshold) {
  for (let digits = 2; digits < 4; digits++) {
    const [a, b] = [Number(score).toFixed(digits), Number(threshold).toFixed(digits)];
    if (a !== b) return [a, b];
  }
  return [Number(score).toFixed(4), Number(threshold).toFixed(4)];
}

/** A point (image pixels) inside candidate `index`'s box that is in no smaller candidate box: a tap there picks it. */
function pointIn(index) {
  const area = (c) => (c[2] - c[0]) * (c[3] - c[1]);
  const [x0, y0, x1, y1] = CANDIDATES[index];
  for (let fy = 0.5; fy < 1; fy += 0.1) {
    for (let fx = 0.5; fx < 1; fx += 0.1) {
      const [x, y] = [x0 + (x1 - x0) * fx, y0 + (y1 - y0) * fy];
      const inside = CANDIDATES.map((c, i) => [c, i]).filter(([c]) => x >= c[0] && x <= c[2] && y >= c[1] && y <= c[3]);
      const smallest = inside.sort((a, b) => area(a[0]) - area(b[0]))[0];
      if (smallest?.[1] === index) return [x, y];
    }
  }
  return null;
}

/** Tap the image at (x, y) in image pixels. */
async function tapImage([x, y]) {
  const frame = await byTest('image-canvas').boundingBox();
  const scale = frame.width / Number(env('LESION_W'));
  await page.mouse.click(frame.x + x * scale, frame.y + y * scale);
}

try {
  await step('01-signed-in', async () => {
    await page.goto(`${BASE}/app`);
    await byTest('username').fill(env('USERNAME'));
    await byTest('password').fill(env('PASSWORD'));
    await byTest('sign-in').click();
    await byTest('pick-file').waitFor();
  });

  await step('02-nothing-drawn', async () => {
    await upload(env('LESION_IMAGE'));
    assert.match(await byTest('roi-intro').innerText(), /or let BraNet find it for you/);
    // nothing drawn: the automatic path is the one primary action, and says what it does
    assert.equal(await byTest('auto').innerText(), 'Find lesion automatically');
    assert.equal(await count('classify'), 0);
    await byTest('auto-hint').waitFor();
  });

  await step('03-found-automatically', async () => {
    const started = Date.now();
    await byTest('auto').click();
    await byTest('result-label').waitFor();
    console.log(`  automatic analysis on screen after ${Date.now() - started} ms`);
    assert.equal(await byTest('auto-title').innerText(), 'Found automatically');
    const found = await byTest('auto-found').innerText();
    const [score, threshold] = pair(env('LESION_SCORE'), env('LESION_THRESHOLD'));
    assert.ok(found.includes(`its lesion score is ${score}; it reports a lesion from ${threshold}`), found);
    assert.match(await byTest('finder-model').innerText(), new RegExp(`^Lesion finder ${env('FINDER_NAME')} · version `));
    await byTest('canvas-overlay-0').waitFor();
    const boxes = await candidateBoxes();
    assert.deepEqual(boxes.map((b) => b.text), CANDIDATES.map((_, i) => String(i + 1)));
    assert.equal(await count('canvas-box'), 0);
    if (CANDIDATES.length > 1) {
      for (const [i, c] of CANDIDATES.entries()) {
        const label = await byTest(`candidate-${i + 1}`).getAttribute('aria-label');
        assert.equal(label, `Candidate ${i + 1}, lesion score ${fixed(c[4])}${i === 0 ? ', shown' : ''}`);
      }
    } else {
      await byTest('auto-one-candidate').waitFor();
    }
  });

  if (CANDIDATES.length > 1) {
    await step('04-second-candidate', async () => {
      await byTest('candidate-2').click();
      await byTest('auto-picked').waitFor();
      assert.equal(await byTest('auto-title').innerText(), 'Candidate 2 of an automatic finding');
      const [score, threshold] = pair(CANDIDATES[1][4], env('LESION_THRESHOLD'));
      assert.ok((await byTest('auto-picked').innerText()).startsWith(
        `You chose candidate 2 of BraNet's lesion finder (lesion score ${score}; it reports a lesion from ${threshold})`));
      assert.equal(await byTest('candidate-2').getAttribute('aria-label'), `Candidate 2, lesion score ${fixed(CANDIDATES[1][4])}, shown`);
      await byTest('result-label').waitFor();
      // (the test checks through the API that this is a box analysis of the same stored image)
    });
    await step('05-back-to-first', async () => {
      // a tap on candidate 1's box on the image (where no smaller box is), else its button
      const at = pointIn(0);
      if (at) await tapImage(at);
      else await byTest('candidate-1').click();
      await byTest('auto-found').waitFor();
      assert.equal(await byTest('auto-title').innerText(), 'Found automatically');
      assert.equal(await byTest('candidate-1').getAttribute('aria-label'), `Candidate 1, lesion score ${fixed(CANDIDATES[0][4])}, shown`);
    });
  }

  await step('06-draw-instead', async () => {
    await byTest('draw-instead').click();
    await byTest('roi-intro').waitFor();
    await byTest('tool-box').waitFor();
  });

  await step('07-no-lesion-found', async () => {
    await upload(env('NORMAL_IMAGE'));
    await byTest('auto').click();
    await byTest('no-lesion').waitFor();
    assert.equal(await byTest('no-lesion').innerText(), env('NO_LESION_MESSAGE'));
    assert.equal(await count('analyze-error'), 0);
    assert.equal(await count('result-label'), 0);
  });

  await step('08-draw-a-box-instead', async () => {
    await byTest('no-lesion-draw').click();
    await byTest('no-lesion').waitFor({ state: 'detached' });
    const canvas = byTest('image-canvas');
    const frame = await canvas.boundingBox();
    const at = (fx, fy) => [frame.x + frame.width * fx, frame.y + frame.height * fy];
    await page.mouse.move(...at(0.3, 0.3));
    await page.mouse.down();
    await page.mouse.move(...at(0.5, 0.5), { steps: 4 });
    await page.mouse.move(...at(0.6, 0.6), { steps: 4 });
    await page.mouse.up();
    await byTest('canvas-box').waitFor();
    await byTest('segmentation-info').waitFor();
    await byTest('classify').waitFor();
  });
} finally {
  await browser.close();
}
assert.deepEqual(outside, [], `requests to outside addresses: ${outside.join(', ')}`);
console.log('auto e2e passed');
