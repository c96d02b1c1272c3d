// The console in a real browser (headless Debian Chromium through playwright-core): first-run
// setup with TOTP, login, a deploy watched live, a live log, rollback, the audit log, a viewer.
// Run by crates/console/tests/browser.rs, which starts the proxy and `nonstop console`.
import { createHmac } from 'node:crypto';
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.CONSOLE_URL;
const secret = process.env.BOOTSTRAP_SECRET;
const shots = process.env.SCREENSHOTS;
const password = 'correct horse battery staple';
if (!url || !secret || !shots) throw new Error('CONSOLE_URL, BOOTSTRAP_SECRET and SCREENSHOTS are required');
mkdirSync(shots, { recursive: true });

/** RFC 4648 base32 to bytes. */
function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    const v = alphabet.indexOf(c);
    if (v < 0) throw new Error(`not base32: ${c}`);
    bits += v.toString(2).padStart(5, '0');
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

/** RFC 6238 TOTP (SHA-1, 6 digits, 30 s) for now + `stepsAhead` steps. */
function totp(secretBase32, stepsAhead = 0) {
  const step = Math.floor(Date.now() / 1000 / 30) + stepsAhead;
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', base32(secretBase32)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const value = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(value).padStart(6, '0');
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 } });
context.setDefaultTimeout(30_000);
const page = await context.newPage();
page.on('dialog', (dialog) => dialog.accept());
page.on('pageerror', (error) => console.log(`page error: ${error.message}`));
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

async function enrolTotp() {
  await page.waitForSelector('#totp-qr');
  check(await page.locator('#totp-qr').evaluate((img) => img.naturalWidth > 0), 'the TOTP QR code is shown');
  const totpSecret = (await page.locator('#totp-secret').textContent()).trim();
  await page.fill('#totp-code', totp(totpSecret));
  await page.click('#totp-confirm');
  await page.waitForURL(`${url}/`);
  return totpSecret;
}

async function login(user, totpSecret) {
  await page.goto(`${url}/login`);
  await page.fill('#login-user', user);
  await page.fill('#login-password', password);
  // The code of the enrolment's step is spent: the next one is good (±1 step of skew).
  if (totpSecret) await page.fill('#login-totp', totp(totpSecret, 1));
  await page.click('#login-submit');
}

async function logout() {
  await page.click('#logout');
  await page.waitForURL(`${url}/login`);
}

// 1. First run: the one-time secret, a password, TOTP.
await page.goto(`${url}/`);
await page.waitForURL(`${url}/login`);
await page.goto(`${url}/setup`);
await page.fill('#setup-secret', secret);
await page.fill('#setup-password', password);
await page.fill('#setup-password2', password);
await page.click('#setup-submit');
await page.waitForSelector('#totp-qr');
await shot('setup-totp');
const adminTotp = await enrolTotp();
check(true, 'setup with the one-time secret and TOTP');

// 2. Log out and in again with password + TOTP.
await logout();
await shot('login');
await login('admin', adminTotp);
await page.waitForURL(`${url}/`);
await page.waitForSelector('[data-service="shop"]');
check(true, 'login with password + TOTP');
await shot('services');

// 3. Deploy with a click and watch the steps arrive.
async function deploy(artifact, version) {
  await page.goto(`${url}/services/shop`);
  await page.waitForSelector('#deploy-button');
  await page.selectOption('#deploy-artifact', artifact);
  await page.fill('#deploy-version', version);
  await page.evaluate(() => {
    window.stepTimes = [];
    new MutationObserver((changes) => {
      for (const change of changes) for (const node of change.addedNodes) window.stepTimes.push([Date.now(), node.dataset.kind]);
    }).observe(document.querySelector('#progress-steps'), { childList: true });
  });
  await page.click('#deploy-button');
  await page.waitForSelector('#progress-status .badge.succeeded', { timeout: 60_000 });
  await page.waitForFunction((v) => document.querySelector('#current-version')?.textContent === v, version);
  const times = await page.evaluate(() => window.stepTimes);
  const steps = times.filter(([, kind]) => kind === 'step');
  check(steps.length >= 3, `deploy ${version}: ${steps.length} steps shown`);
  check(times[times.length - 1][0] - times[0][0] >= 100, `deploy ${version}: steps appeared over ${times[times.length - 1][0] - times[0][0]} ms, as they happened`);
  check(times[times.length - 1][1] === 'finished', `deploy ${version}: finished last`);
}
await deploy('hello-v1.jar', 'v1');
await deploy('hello-v2.jar', 'v2');
await shot('service');

// 4. Follow the live log of the instance that runs v2; search; pause.
const row = page.locator('tr[data-node]', { has: page.locator('td.version', { hasText: 'v2' }) }).first();
await row.locator('a.log-link').click();
await page.waitForSelector('#log-lines .file');
const file = (await page.locator('#log-lines .file').first().textContent()).replace(/^==> /, '').replace(/ <==$/, '');
await page.waitForFunction(() => [...document.querySelectorAll('#log-lines .line')].some((l) => l.textContent.includes('listening')));
const marker = `browser-marker-${Date.now()}`;
appendFileSync(file, `${marker} one\n`);
await page.waitForFunction((m) => [...document.querySelectorAll('#log-lines .line')].some((l) => l.textContent.includes(m)), marker);
check(true, 'a line written to the log shows up live');
await page.fill('#log-filter', marker);
const shown = await page.locator('#log-lines .line').allTextContents();
check(shown.length === 1 && shown[0].includes(marker), 'the search shows only matching lines');
await page.click('#log-pause');
appendFileSync(file, `${marker} two\n`);
await page.waitForFunction(() => document.querySelector('#log-pending').textContent.startsWith('1 new line'));
check((await page.locator('#log-lines .line').count()) === 1, 'paused: the new line waits');
await page.click('#log-pause');
await page.waitForFunction((m) => [...document.querySelectorAll('#log-lines .line')].some((l) => l.textContent.includes(`${m} two`)), marker);
check(true, 'resumed: the new line is shown');
await page.fill('#log-filter', '');
await shot('logs');

// 5. Roll back with a click.
await page.goto(`${url}/services/shop`);
await page.waitForSelector('#rollback-button');
await page.click('#rollback-button');
await page.waitForFunction(() => document.querySelector('#current-version')?.textContent === 'v1', null, { timeout: 60_000 });
await page.waitForSelector('#progress-status .badge.succeeded');
check(true, 'rollback with a click: v1 serves again');
await page.waitForSelector('#history a[href$="/deploys/3"]');
await page.click('#history a[href$="/deploys/3"]');
await page.waitForSelector('#journal tbody tr');
await shot('history');

// 5b. A canary: it pauses after its first window, the chart shows the steps with the stable and
// the canary release's numbers, and a click on Promote takes it through its last step.
await page.goto(`${url}/services/shop`);
await page.waitForSelector('#deploy-button');
await page.selectOption('#deploy-artifact', 'hello-v2.jar');
await page.fill('#deploy-version', 'v3');
await page.selectOption('#deploy-strategy', 'canary');
await page.click('#deploy-button');
try {
  await page.waitForSelector('#canary-step-2[data-state="waiting"]', { state: 'attached', timeout: 60_000 });
} catch (e) {
  console.log('canary panel:', await page.locator('#canary').innerHTML());
  console.log('progress:', await page.locator('#progress').innerText());
  throw e;
}
await page.waitForSelector('#paused #promote-button');
check(await page.locator('#canary-step-1').getAttribute('data-state') === 'passed', 'canary: the first window passed');
check(await page.locator('#canary-step-1 rect.canary').count() === 2, 'canary: the first window shows the canary\'s error rate and latency');
check(await page.locator('#canary-step-1 rect.stable').count() === 2, 'canary: … and the stable release\'s');
check(await page.locator('#canary-step-3').getAttribute('data-state') === 'pending', 'canary: the last step waits');
await shot('canary-paused');
await page.click('#promote-button');
await page.waitForFunction(() => document.querySelector('#current-version')?.textContent === 'v3', null, { timeout: 60_000 });
await page.waitForSelector('#canary-step-3[data-state="passed"]', { timeout: 30_000 });
check(true, 'canary: promoted with a click, v3 serves after its last step');
await shot('canary-promoted');

// 6. All of it in the audit log.
await page.goto(`${url}/audit`);
for (const action of ['setup', 'login', 'logout', 'deploy', 'deploy-finished', 'rollback', 'rollback-finished', 'promote']) {
  await page.waitForSelector(`#audit tr[data-action="${action}"]`);
}
check(true, 'setup, login, logout, deploys and the rollback are in the audit log');
await shot('audit');

// 7. Users: a viewer of shop; agents: a join token.
await page.goto(`${url}/users`);
await page.fill('#new-user-name', 'vera');
await page.fill('#new-user-password', password);
await page.selectOption('#new-user-role', 'viewer');
await page.click('#new-user-create');
const vera = page.locator('tr[data-user="vera"]');
await vera.waitFor();
await vera.locator('button', { hasText: 'Grant' }).click();
await page.waitForSelector('tr[data-user="vera"] >> text=shop: viewer');
await shot('users');
await page.goto(`${url}/agents`);
await page.fill('#agent-name', 'web1');
await page.click('#agent-issue');
await page.waitForSelector('#agent-command');
check((await page.locator('#agent-command').textContent()).includes('nonstop agent join https://'), 'a join token with its command');
await shot('agents');
await logout();

// 8. The viewer: enrols TOTP, sees no buttons, and the API refuses a deploy.
await login('vera', null);
await page.waitForURL(`${url}/setup`);
await enrolTotp();
await page.goto(`${url}/services/shop`);
await page.waitForSelector('#read-only');
await page.waitForSelector('tr[data-node]');
check((await page.locator('#deploy-button').count()) === 0, 'the viewer sees no deploy button');
check((await page.locator('#rollback-button').count()) === 0, 'the viewer sees no rollback button');
check((await page.locator('button[data-action]').count()) === 0, 'the viewer sees no drain/enable buttons');
await shot('viewer');
const statuses = await page.evaluate(async () => {
  const me = await (await fetch('/api/me')).json();
  const post = (path, body) => fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf },
    body: JSON.stringify(body),
  }).then((r) => r.status);
  return [
    await post('/api/services/shop/deploy', { artifact: 'hello-v2.jar', version: 'v2' }),
    await post('/api/services/shop/rollback', {}),
    await post('/api/services/shop/nodes/blue/drain', {}),
  ];
});
check(statuses.every((s) => s === 403), `the API refuses the viewer: ${statuses.join(', ')}`);

await browser.close();
console.log('browser scenario: all checks passed');
