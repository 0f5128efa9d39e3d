// The browser of the Portcullis passkey tests: one headless Chromium session (Debian's
// `chromium` package, never a downloaded browser), driven by playwright-core, with
// Chromium's WebAuthn virtual authenticator available through the DevTools protocol.
//
// tests/src/browser.rs runs it. Input on stdin, one JSON object:
//   {"chromium": "/usr/bin/chromium", "steps": [step, ...]}
// Output on stdout, one JSON object:
//   {"results": [one value per step], "console": ["console errors and page errors"]}
// or, when a step fails (a missing selector, a navigation that errs, a bad step):
//   {"error": "message", "step": index, "results": [those done], "console": [...]}
// with exit status 1. Node's and Playwright's own messages go to stderr (Chromium's show
// in Playwright's launch errors).
//
// Steps (see tests/src/browser.rs for the full contract):
//   {"authenticator": "add", "options": {...}?}   -> {"authenticator_id": "..."}
//   {"authenticator": "remove"}                   -> {"removed": true}
//   {"credentials": true}                         -> {"credentials": [...]}
//   {"goto": url, "timeout_ms": 15000?, "ready_ms": timeout_ms?}
//                                                 -> {"url", "status", "headers", "ready"}
//   {"fill": {selector: value, ...}}              -> {}
//   {"click": selector, "timeout_ms": 20000?}     -> JSON of #result, or {"timeout": true}
//   {"eval": "expression"}                        -> its JSON value (promises awaited)
//   {"submit": selector, "timeout_ms": 15000?}    -> {"url", "status", "text"} of the page
//                                                    the click navigates to (a form post)

import { chromium } from "playwright-core";

// How long a page may take to set `document.body.dataset.ready` after a `goto`.
const READY_TIMEOUT_MS = 15_000;
// How long a `click` waits for `#result` to change.
const CLICK_TIMEOUT_MS = 20_000;
// Bound on finding an element to fill or click (it is there or the page is wrong).
const ACTION_TIMEOUT_MS = 5_000;
// The whole session, below the Rust side's 90 s so that the browser is closed here
// (and the error says which step hung) rather than the process being killed.
const SESSION_TIMEOUT_MS = 80_000;

// A passkey platform authenticator that always verifies the user and answers at once
// (no touch to simulate). A step's `options` override these.
const AUTHENTICATOR = {
  protocol: "ctap2",
  transport: "internal",
  hasResidentKey: true,
  hasUserVerification: true,
  isUserVerified: true,
  automaticPresenceSimulation: true,
};

const input = JSON.parse(await readStdin());
const results = [];
const consoleErrors = [];
let stepIndex = -1;
let browser = null;
let finishing = false;

const watchdog = setTimeout(() => {
  finish(1, { error: `the session took over ${SESSION_TIMEOUT_MS} ms`, step: stepIndex });
}, SESSION_TIMEOUT_MS);

try {
  browser = await chromium.launch({
    executablePath: input.chromium,
    headless: true,
    // Tests run as root, where Chromium's sandbox cannot start.
    chromiumSandbox: false,
    args: ["--no-sandbox"],
    timeout: 30_000,
  });
  const page = await browser.newPage();
  // Console errors include Content-Security-Policy violations ("Refused to ...").
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(`pageerror: ${error.message}`));

  let cdp = null;
  const authenticators = [];
  const currentAuthenticator = () => {
    const id = authenticators.at(-1);
    if (id === undefined) throw new Error("no virtual authenticator: add one first");
    return id;
  };

  for (const [index, step] of (input.steps ?? []).entries()) {
    stepIndex = index;
    if (step.authenticator === "add") {
      if (cdp === null) {
        cdp = await page.context().newCDPSession(page);
        await cdp.send("WebAuthn.enable");
      }
      const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
        options: { ...AUTHENTICATOR, ...(step.options ?? {}) },
      });
      authenticators.push(authenticatorId);
      results.push({ authenticator_id: authenticatorId });
    } else if (step.authenticator === "remove") {
      await cdp.send("WebAuthn.removeVirtualAuthenticator", {
        authenticatorId: currentAuthenticator(),
      });
      authenticators.pop();
      results.push({ removed: true });
    } else if (step.credentials !== undefined) {
      const { credentials } = await cdp.send("WebAuthn.getCredentials", {
        authenticatorId: currentAuthenticator(),
      });
      // The private key is of no use to a test and would only clutter its failures.
      results.push({ credentials: credentials.map(({ privateKey, ...rest }) => rest) });
    } else if (typeof step.goto === "string") {
      const timeout = step.timeout_ms ?? READY_TIMEOUT_MS;
      results.push(await goto(page, step.goto, timeout, step.ready_ms ?? timeout));
    } else if (step.fill !== undefined) {
      for (const [selector, value] of Object.entries(step.fill)) {
        await page.fill(selector, String(value), { timeout: ACTION_TIMEOUT_MS });
      }
      results.push({});
    } else if (typeof step.click === "string") {
      results.push(await click(page, step.click, step.timeout_ms ?? CLICK_TIMEOUT_MS));
    } else if (typeof step.submit === "string") {
      results.push(await submit(page, step.submit, step.timeout_ms ?? READY_TIMEOUT_MS));
    } else if (typeof step.eval === "string") {
      // A string is evaluated as an expression; a promise it yields is awaited.
      const value = await page.evaluate(step.eval);
      results.push(value === undefined ? null : value);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
  await finish(0, {});
} catch (error) {
  // Playwright colours its call logs; the Rust side quotes them in plain text.
  const message = String(error?.stack ?? error).replace(/\u001b\[[0-9;]*m/g, "");
  await finish(1, { error: message, step: stepIndex });
}

// Navigates, then waits for the page to say it is ready. A page that never does (an
// error page, a page refused by its own policy) is a result, not a failure.
async function goto(page, url, timeout, readyTimeout) {
  const response = await page.goto(url, { waitUntil: "load", timeout });
  const answer = {
    url: page.url(),
    status: response?.status() ?? null,
    headers: response ? await response.allHeaders() : {},
  };
  try {
    await page.waitForFunction(() => document.body?.dataset.ready === "true", null, {
      timeout: readyTimeout,
    });
    return { ...answer, ready: true };
  } catch (error) {
    if (error?.name !== "TimeoutError") throw error;
    return { ...answer, ready: false };
  }
}

// Clicks a control that navigates (a form's button, redirects followed) and returns
// where the browser ended: its URL, the last response's status, the page's text.
async function submit(page, selector, timeout) {
  const [response] = await Promise.all([
    page.waitForNavigation({ waitUntil: "load", timeout }),
    page.click(selector, { timeout: ACTION_TIMEOUT_MS }),
  ]);
  return {
    url: page.url(),
    status: response?.status() ?? null,
    text: await page.evaluate(() => document.body?.innerText ?? ""),
  };
}

// Clicks and returns what the page then writes into `#result` (as JSON).
async function click(page, selector, timeout) {
  const readResult = () => document.querySelector("#result")?.textContent ?? "";
  const before = await page.evaluate(readResult);
  await page.click(selector, { timeout: ACTION_TIMEOUT_MS });
  let text;
  try {
    const handle = await page.waitForFunction(
      (before) => {
        const now = document.querySelector("#result")?.textContent ?? "";
        return now !== before && now !== "" ? now : false;
      },
      before,
      { timeout },
    );
    text = await handle.jsonValue();
  } catch (error) {
    if (error?.name !== "TimeoutError") throw error;
    return { timeout: true };
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`#result after clicking ${selector} is not JSON: ${text}`);
  }
}

// Writes the output object, closes the browser and exits with `status`.
async function finish(status, extra) {
  // The watchdog and the steps may both get here; the first one reports.
  if (finishing) return;
  finishing = true;
  clearTimeout(watchdog);
  const output = JSON.stringify({ ...extra, results, console: consoleErrors }) + "\n";
  await new Promise((resolve) => process.stdout.write(output, resolve));
  if (browser !== null) {
    // Closing can hang on a wedged browser; the exit must not wait for it forever.
    const grace = new Promise((resolve) => setTimeout(resolve, 5_000));
    await Promise.race([browser.close().catch(() => {}), grace]);
  }
  process.exit(status);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}
