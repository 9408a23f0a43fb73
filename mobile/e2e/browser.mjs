// Debian's chromium driven by playwright-core, with every request that leaves this machine aborted
// and remembered: a hospital network is closed, so a page that needs the internet is a failure.
import { chromium } from 'playwright-core';

const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]']);

export async function launch() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const outside = [];
  async function page(viewport, colorScheme = 'light') {
    const context = await browser.newContext({
      viewport, colorScheme, deviceScaleFactor: 1, isMobile: viewport.width < 600, hasTouch: viewport.width < 600,
    });
    await context.route('**/*', (route) => {
      const url = new URL(route.request().url());
      if (url.protocol === 'data:' || url.protocol === 'blob:' || LOCAL.has(url.hostname)) return route.continue();
      outside.push(url.href);
      return route.abort('blockedbyclient');
    });
    return context.newPage();
  }
  return { browser, page, outside };
}

/** The environment variable `name`, or an error naming it (the Python test sets them all). */
export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
};
