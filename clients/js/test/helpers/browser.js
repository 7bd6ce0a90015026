// Headless Chromium from Debian (/usr/bin/chromium) driven by playwright-core.
// No browser is ever downloaded.
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = join(here, "../../test-artifacts");

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export async function launchBrowser() {
  await mkdir(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
}

/** Saves a PNG of `page` into test-artifacts/. */
export async function screenshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: false });
  return path;
}

/** Collects page errors and console errors so a test can assert there were none. */
export function watchErrors(page, label) {
  const errors = [];
  page.on("pageerror", (error) => errors.push(`${label}: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(`${label} console: ${message.text()}`);
  });
  return errors;
}

const DOC_IMAGES = join(here, "../../../../docs/images");

/**
 * A screenshot for the embedding guide: always into test-artifacts/, and
 * into docs/images/ too when SWITCHBOARD_DOC_IMAGES=1 (so ordinary runs
 * leave the working tree alone).
 */
export async function docShot(page, name, options = {}) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: false, ...options });
  if (process.env.SWITCHBOARD_DOC_IMAGES === "1") {
    await mkdir(DOC_IMAGES, { recursive: true });
    await page.screenshot({ path: join(DOC_IMAGES, `${name}.png`), fullPage: false, ...options });
  }
  return path;
}

const AXE_SOURCE = join(here, "../../node_modules/axe-core/axe.min.js");

/**
 * Runs axe-core in the page (it walks open shadow roots, so the widget is
 * included) and returns the serious and critical violations as readable lines.
 */
export async function axeViolations(page, context) {
  const { readFile } = await import("node:fs/promises");
  if (!(await page.evaluate(() => typeof window.axe === "object"))) {
    await page.addScriptTag({ content: await readFile(AXE_SOURCE, "utf8") });
  }
  const violations = await page.evaluate(async (ctx) => {
    const result = await window.axe.run(ctx ?? document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) }));
  }, context ?? null);
  return violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.join(", ")})`);
}
