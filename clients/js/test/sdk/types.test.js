// The hand-written TypeScript declarations compile, strictly, against the
// documented usage (test/types/usage.ts).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(import.meta.url);

test("types/index.d.ts type-checks the documented usage with tsc --strict", async () => {
  const tsc = require.resolve("typescript/bin/tsc");
  const args = [tsc, "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", join(root, "test/types/usage.ts")];
  try {
    await promisify(execFile)(process.execPath, args, { cwd: root });
  } catch (error) {
    assert.fail(`tsc failed:\n${error.stdout}${error.stderr}`);
  }
});
