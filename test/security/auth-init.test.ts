// `troupe auth init` keeps its secrets: bcrypt hashes in auth.conf, a 0700 folder, files made
// new (never through a link), no silent re-run; the password stays off the command line;
// one process of a role can have its own nkey.
import { chmod, lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import bcrypt from "bcryptjs";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineTask, Schema, Troupe } from "../../src/index.js";
import { NatsServer } from "../../src/testing/index.js";
import { authConf, identities, inboxPrefix, type Identity } from "../../src/nats/roles.js";
import { setupLayout } from "../../src/nats/setup.js";
import { runCli } from "../helpers/cli.js";
import { makeUserNkey } from "./identities.js";

const echo = defineTask({
  name: "authinit.echo",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  handler: async ({ text }) => `echo ${text}`,
});

let base: string;
let dir: string;
let server: NatsServer;
const open: Troupe[] = [];
const servers: NatsServer[] = [];

const FILES = ["auth.conf", "admin.json", "client.json", "worker.json", "coordinator.json", "inspector.json", "gateway.json"];
const contents = async (folder: string) => Object.fromEntries(await Promise.all(FILES.map(async (f) => [f, await readFile(join(folder, f), "utf8")] as const)));
const role = async (folder: string, name: string) => JSON.parse(await readFile(join(folder, `${name}.json`), "utf8")) as { user: string; pass: string; layout?: "verify"; inboxPrefix?: string };
const connect = async (options: object) => {
  const t = await Troupe.connect({ ...options, logger: pino({ level: "silent" }) } as Parameters<typeof Troupe.connect>[0]);
  open.push(t);
  return t;
};
/** A server with this auth.conf included (the path relative to the folder NatsServer writes its config in). */
const serverWith = async (conf: string) => {
  const s = await NatsServer.start({ config: `include ${JSON.stringify(relative(join(tmpdir(), "server"), conf))}` });
  servers.push(s);
  return s;
};

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), "troupe-auth-init-"));
  dir = join(base, "auth");
  const init = await runCli(["auth", "init", dir], {}, { cwd: base });
  expect(init.code, init.stderr).toBe(0);
  server = await serverWith(join(dir, "auth.conf"));
  expect(await runCli(["setup", "--server", server.url, "--auth", join(dir, "admin.json")], { NATS_URL: undefined }, { cwd: base })).toMatchObject({ code: 0 });
}, 120_000);

afterAll(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
  await Promise.all(servers.map((s) => s.stop()));
  await rm(base, { recursive: true, force: true });
});

describe("troupe auth init", () => {
  it("writes bcrypt hashes, not passwords, into auth.conf, and the server takes each role's password", async () => {
    const conf = await readFile(join(dir, "auth.conf"), "utf8");
    for (const name of ["admin", "client", "worker"]) {
      const { user, pass } = await role(dir, name);
      expect(conf).not.toContain(pass);
      const hash = new RegExp(`user: "${user}", password: "([^"]+)"`).exec(conf)?.[1] ?? "";
      expect(hash).toMatch(/^\$2b\$10\$/);
      expect(bcrypt.compareSync(pass, hash)).toBe(true);
    }
    const worker = await connect({ servers: server.url, ...(await role(dir, "worker")) });
    await worker.worker({ tasks: [echo] });
    const client = await connect({ servers: server.url, ...(await role(dir, "client")) });
    expect(await (await client.submit(echo, { text: "hashed" })).result({ timeout: 30_000 })).toBe("echo hashed");
    // A wrong password is still refused.
    const refused = await Troupe.connect({ servers: server.url, ...(await role(dir, "client")), pass: "not-the-password", logger: pino({ level: "silent" }) }).catch((e: unknown) => e);
    expect(String((refused as Error).message)).toMatch(/authorization/i);
  }, 120_000);

  it("makes the folder 0700 and each file 0600, an existing folder too", async () => {
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    for (const f of FILES) expect((await stat(join(dir, f))).mode & 0o777).toBe(0o600);
    const existing = join(base, "existing");
    await mkdir(existing, { mode: 0o755 });
    await chmod(existing, 0o755);
    expect((await runCli(["auth", "init", existing], {}, { cwd: base })).code).toBe(0);
    expect((await stat(existing)).mode & 0o777).toBe(0o700);
  }, 120_000);

  it("refuses a re-run in one line (AuthFilesExist) and changes nothing; --force replaces every file", async () => {
    const dir = join(base, "rerun");
    expect((await runCli(["auth", "init", dir], {}, { cwd: base })).code).toBe(0);
    const before = await contents(dir);
    const again = await runCli(["auth", "init", dir], {}, { cwd: base });
    expect(again.code).toBe(1);
    expect(again.stdout).toBe("");
    expect(again.stderr).toMatch(/^troupe auth init: AuthFilesExist: .*already holds auth\.conf, admin\.json, .*pass --force to replace them\n$/);
    expect(await contents(dir)).toEqual(before);

    const forced = await runCli(["auth", "init", dir, "--force"], {}, { cwd: base });
    expect(forced.code, forced.stderr).toBe(0);
    const after = await contents(dir);
    for (const f of FILES) expect(after[f]).not.toBe(before[f]);
    for (const f of FILES) expect((await stat(join(dir, f))).mode & 0o777).toBe(0o600);
    // The new files agree with each other: a server given the new auth.conf takes the new passwords.
    const fresh = await serverWith(join(dir, "auth.conf"));
    const admin = await connect({ servers: fresh.url, ...(await role(dir, "admin")) });
    expect(admin).toBeDefined();
  }, 120_000);

  it("never writes through a symbolic link in place of a file: refused, and with --force the link itself is replaced", async () => {
    const folder = join(base, "linked");
    await mkdir(folder);
    const victim = join(base, "victim.txt");
    await writeFile(victim, "precious\n");
    await symlink(victim, join(folder, "client.json"));
    const refused = await runCli(["auth", "init", folder], {}, { cwd: base });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^troupe auth init: AuthFilesExist: .*already holds client\.json /);
    expect(await readlink(join(folder, "client.json"))).toBe(victim);
    await expect(lstat(join(folder, "auth.conf"))).rejects.toThrow(/ENOENT/);

    const forced = await runCli(["auth", "init", folder, "--force"], {}, { cwd: base });
    expect(forced.code, forced.stderr).toBe(0);
    expect((await lstat(join(folder, "client.json"))).isSymbolicLink()).toBe(false);
    expect((await role(folder, "client")).user).toBe("troupe-client");
    expect(await readFile(victim, "utf8")).toBe("precious\n");
  }, 120_000);
});

describe("the password off the command line", () => {
  /** `troupe workers` as the client role, its password given some way (the other options from its file). */
  const workers = async (how: { flags?: string[]; env?: Record<string, string> }) => {
    const { user, inboxPrefix: prefix } = await role(dir, "client");
    const env = { NATS_URL: undefined, TROUPE_LAYOUT: "verify", TROUPE_INBOX_PREFIX: prefix!, TROUPE_PASS: undefined, ...how.env };
    return runCli(["workers", "--server", server.url, "--user", user, ...(how.flags ?? [])], env, { cwd: base });
  };

  it("--password-file FILE and TROUPE_PASS connect without a warning; --password still connects but warns about ps", async () => {
    const { pass } = await role(dir, "client");
    const file = join(base, "client.pass");
    await writeFile(file, `${pass}\n`, { mode: 0o600 });
    const [fromFile, fromEnv, fromFlag, wrongFile] = await Promise.all([
      workers({ flags: ["--password-file", file] }),
      workers({ env: { TROUPE_PASS: pass } }),
      workers({ flags: ["--password", pass] }),
      workers({ flags: ["--password-file", join(base, "no-such.pass")] }),
    ]);
    for (const quiet of [fromFile, fromEnv]) {
      expect(quiet.code, quiet.stderr).toBe(0);
      expect(quiet.stderr).toBe("");
    }
    expect(fromFlag.code, fromFlag.stderr).toBe(0);
    expect(fromFlag.stderr).toBe("troupe workers: warning: --password shows in `ps` to every user of this machine; use TROUPE_PASS or --password-file FILE\n");
    expect(wrongFile.code).toBe(2);
    expect(wrongFile.stderr).toMatch(/^troupe workers: UsageError: --password-file \S+no-such\.pass: ENOENT/);
    const both = await runCli(["config", "--password", "x", "--password-file", file], { NATS_URL: undefined }, { cwd: base });
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("UsageError: give one of --password and --password-file");
    const shown = await runCli(["config", "--password-file", file], { NATS_URL: undefined }, { cwd: base });
    expect(shown.stdout).toMatch(/^connection\.pass +\*{4} +flag --password-file$/m);
    expect(shown.stdout).not.toContain(pass);
  }, 120_000);
});

describe("one process, one nkey", () => {
  it("a worker with its own nkey (the worker role's permissions) serves; an nkey not listed is refused", async () => {
    const keys = join(base, "keys");
    await mkdir(keys, { mode: 0o700 });
    const [one, stranger] = await Promise.all([makeUserNkey(keys, "worker-1"), makeUserNkey(keys, "stranger")]);
    const all = identities();
    const byRole = (r: string) => all.find((i) => i.role === r)!;
    const worker: Identity = byRole("worker");
    const conf = join(keys, "auth.conf");
    await writeFile(
      conf,
      authConf([
        { identity: byRole("admin"), password: bcrypt.hashSync("admin-pass", 10) },
        { identity: byRole("client"), password: bcrypt.hashSync("client-pass", 10) },
        { identity: worker, nkey: one.publicKey },
      ]),
      { mode: 0o600 },
    );
    expect(await readFile(conf, "utf8")).toContain(`nkey: "${one.publicKey}"`);
    const s = await serverWith(conf);
    await setupLayout({ servers: s.url, user: "troupe-admin", pass: "admin-pass" }, false);

    // What `--auth worker-1.json` would hold: the seed file, the layout opened only, the role's inbox.
    const asWorker = { servers: s.url, nkey: one.seedFile, layout: "verify" as const, inboxPrefix: inboxPrefix(worker) };
    await (await connect(asWorker)).worker({ tasks: [echo] });
    const client = await connect({ servers: s.url, user: "troupe-client", pass: "client-pass", layout: "verify", inboxPrefix: inboxPrefix(byRole("client")) });
    expect(await (await client.submit(echo, { text: "nkey" })).result({ timeout: 30_000 })).toBe("echo nkey");

    const refused = await Troupe.connect({ ...asWorker, nkey: stranger.seedFile, logger: pino({ level: "silent" }) }).catch((e: unknown) => e);
    expect(String((refused as Error).message)).toMatch(/authorization refused: the server rejected the nkey/);
    // The CLI takes the seed from a connection file too.
    const file = join(keys, "worker-1.json");
    await writeFile(file, JSON.stringify({ nkey: one.seedFile, layout: "verify", inboxPrefix: inboxPrefix(worker) }), { mode: 0o600 });
    const listed = await runCli(["workers", "--server", s.url, "--auth", file], { NATS_URL: undefined }, { cwd: base });
    expect(listed.code, listed.stderr).toBe(0);
  }, 120_000);
});
