/**
 * A headless Chromium for the browser tests, driven by playwright-core: Debian's `chromium`
 * package (`.ci/run` installs it when missing; `TROUPE_CHROMIUM` names another binary).
 * One browser per test file, closed after it; screenshots go to `test-artifacts/`.
 */
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll } from "vitest";
import { chromium, type Browser, type Page } from "playwright-core";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Where the tests' screenshots go (not committed). */
export const ARTIFACTS = join(ROOT, "test-artifacts");

export const CHROMIUM = process.env.TROUPE_CHROMIUM ?? "/usr/bin/chromium";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A browser launched before the file's tests and closed after them. */
export const useBrowser = () => {
  let browser: Browser | undefined;
  beforeAll(async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60_000 });
  }, 90_000);
  afterAll(async () => {
    await browser?.close();
  });
  return (): Browser => {
    if (browser === undefined) throw new Error("chromium not launched");
    return browser;
  };
};

/**
 * A new page of the given size whose script errors fail the test: `errors()` lists them
 * (uncaught exceptions and console errors other than failed loads the test caused).
 */
export const openPage = async (browser: Browser, options: { width?: number; height?: number } = {}) => {
  const context = await browser.newContext({ viewport: { width: options.width ?? 1440, height: options.height ?? 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  return { page, errors: () => errors, close: () => context.close() };
};

/** Saves a screenshot of the page as `test-artifacts/<name>.png`, and copies it to `copyTo` (relative to the repository) when given. */
export const screenshot = async (page: Page, name: string, copyTo?: string): Promise<string> => {
  await mkdir(ARTIFACTS, { recursive: true });
  const file = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, animations: "disabled" });
  // The README's pictures are made again only when asked (`TROUPE_DOCS_SCREENSHOTS=1 npx vitest run test/inspect/browser.test.ts`).
  if (copyTo !== undefined && process.env.TROUPE_DOCS_SCREENSHOTS === "1") {
    const target = join(ROOT, copyTo);
    await mkdir(dirname(target), { recursive: true });
    await copyFile(file, target);
  }
  return file;
};
