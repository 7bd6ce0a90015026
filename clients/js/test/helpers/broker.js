// Starts a real Switchboard broker for a test: its own process, an ephemeral
// port on 127.0.0.1, a fresh working directory and a random JWT secret.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The broker binary: $SWITCHBOARD_BIN, else target/release/switchboard of the repo. */
export const BROKER_BIN = resolve(process.env.SWITCHBOARD_BIN ?? join(here, "../../../../target/release/switchboard"));

/** The configuration most tests use: anonymous customers, a custom action and a greeter. */
export const DEFAULT_CONFIG = `
anonymous_customers = true

[[actions.custom]]
name = "contact-sales"
action = "StartEngagement"
payload = { formData = { department = "sales" } }
description = "Start a chat with sales"

[[actions.after]]
on = "StartEngagement"
invoke = "SendMessage"
as = "greeter"
payload = { body = "Thanks for reaching out! An agent will be with you shortly." }
`;

/**
 * DEFAULT_CONFIG plus demo tokens, for tests that sign agents in through the
 * demo console: a broker with a JWT secret serves them only when asked to.
 */
export const DEMO_CONFIG = `demo_tokens = true\n${DEFAULT_CONFIG}`;

export const GREETING = "Thanks for reaching out! An agent will be with you shortly.";

function base64url(input) {
  return Buffer.from(input).toString("base64url");
}

/** An HS256 JWT with claims sub, role, exp. */
export function mintToken(secret, { sub, role, ttlSeconds = 3600, exp } = {}) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = base64url(JSON.stringify({ sub, role, exp: exp ?? Math.floor(Date.now() / 1000) + ttlSeconds }));
  const signature = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

/**
 * Starts a broker. Options: `config` (TOML text, default DEFAULT_CONFIG; null
 * for none), `port` (default 0 = ephemeral), `secret`, `workdir` (reuse a
 * directory, e.g. across a restart), `env`.
 */
export async function startBroker(options = {}) {
  const secret = options.secret ?? randomBytes(24).toString("hex");
  const ownWorkdir = !options.workdir;
  const workdir = options.workdir ?? (await mkdtemp(join(tmpdir(), "switchboard-test-")));
  const args = ["--listen", `127.0.0.1:${options.port ?? 0}`];
  const config = options.config === undefined ? DEFAULT_CONFIG : options.config;
  if (config !== null) {
    const file = join(workdir, "switchboard.toml");
    await writeFile(file, config);
    args.unshift("--config", file);
  }
  const child = spawn(BROKER_BIN, args, {
    cwd: workdir,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", ...options.env, SWITCHBOARD_JWT_SECRET: secret },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  let stdout = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  const exited = new Promise((resolveExit) => {
    child.once("exit", (code, signal) => resolveExit({ code, signal }));
  });

  const port = await new Promise((resolvePort, reject) => {
    let settled = false;
    const timer = setTimeout(() => fail(new Error("the broker did not print its listening line within 20 s")), 20_000);
    const fail = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      error.message += `\nbroker: ${BROKER_BIN} ${args.join(" ")}\nstdout: ${stdout}\nstderr: ${stderr.slice(-4000)}`;
      reject(error);
    };
    child.once("error", fail);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const match = /switchboard listening on 127\.0\.0\.1:(\d+)/.exec(stdout);
      if (match && !settled) {
        settled = true;
        clearTimeout(timer);
        resolvePort(Number(match[1]));
      }
    });
    exited.then(({ code, signal }) => fail(new Error(`the broker exited early (code ${code}, signal ${signal})`)));
  });

  let stopped = false;
  const broker = {
    port,
    secret,
    workdir,
    process: child,
    httpUrl: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    exited,
    get stderr() {
      return stderr;
    },
    token(sub, role, extra = {}) {
      return mintToken(secret, { sub, role, ...extra });
    },
    /** SIGTERM (the broker closes sessions with 4000 and exits 0); SIGKILL if it lingers. */
    async stop({ signal = "SIGTERM", timeout = 10_000, keepWorkdir = false } = {}) {
      if (!stopped) {
        stopped = true;
        if (child.exitCode === null && child.signalCode === null) {
          child.kill(signal);
          const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
          await exited;
          clearTimeout(timer);
        }
      }
      if (ownWorkdir && !keepWorkdir) await rm(workdir, { recursive: true, force: true });
      return exited;
    },
  };
  return broker;
}
