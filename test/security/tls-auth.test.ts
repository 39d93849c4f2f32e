/**
 * TLS (with a CA, and mutual), tokens, user/password, nkeys and `.creds` files against real
 * nats-servers configured for each, with certificates and keys made at run time. A refused
 * credential or certificate is a `NatsFailure` naming what was refused, never a hang.
 */
import { createServer, type AddressInfo, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defineTask, InvalidOption, NatsFailure, Schema, Troupe, type TroupeOptions } from "../../src/index.js";
import { PermissionDenied } from "../../src/errors.js";
import { NatsServer } from "../../src/testing/index.js";
import { runCli } from "../helpers/cli.js";
import { makeCertificates, type TestCertificates } from "./certs.js";
import { makeDecentralized, makeUserNkey, type Decentralized, type UserNkey } from "./identities.js";

const double = defineTask({
  name: "security.double",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  handler: async ({ n }) => n * 2,
});

let certs: TestCertificates;
let dir: string;
let nkey: UserNkey;
let otherNkey: UserNkey;
let operator: Decentralized;
const servers: Record<"tls" | "mtls" | "token" | "users" | "nkey" | "creds", NatsServer> = {} as never;

beforeAll(async () => {
  certs = await makeCertificates();
  dir = await mkdtemp(join(tmpdir(), "troupe-auth-"));
  [nkey, otherNkey, operator] = await Promise.all([makeUserNkey(dir, "user"), makeUserNkey(dir, "other"), makeDecentralized(dir)]);
  const tls = (verify: boolean) =>
    `tls { cert_file: ${JSON.stringify(certs.serverCert)}, key_file: ${JSON.stringify(certs.serverKey)}, ` +
    `ca_file: ${JSON.stringify(certs.caFile)}, verify: ${verify}, timeout: 5 }`;
  const [a, b, c, d, e, f] = await Promise.all([
    NatsServer.start({ config: tls(false) }),
    NatsServer.start({ config: tls(true) }),
    NatsServer.start({ config: `authorization { token: "s3cret-token" }` }),
    NatsServer.start({
      config:
        `authorization { users: [ { user: "alice", password: "alice-pw" }, ` +
        `{ user: "nojs", password: "nojs-pw", permissions: { publish: { deny: ["$JS.API.>"] } } } ] }`,
    }),
    NatsServer.start({ config: `authorization { users: [ { nkey: ${nkey.publicKey} } ] }` }),
    NatsServer.start({ config: operator.serverConfig }),
  ]);
  Object.assign(servers, { tls: a, mtls: b, token: c, users: d, nkey: e, creds: f });
}, 120_000);

afterAll(async () => {
  await Promise.all(Object.values(servers).map((s) => s.stop()));
  await certs?.remove();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** TLS servers answer on the name their certificate holds. */
const tlsUrl = (s: NatsServer) => `tls://localhost:${s.port}`;

/** Connect, run one task through a worker of the same identity, close. */
const roundTrip = async (options: TroupeOptions) => {
  const troupe = await Troupe.connect(options);
  try {
    const worker = await troupe.worker({ tasks: [double] });
    const run = await troupe.submit(double, { n: 21 });
    expect(await run.result({ timeout: "30 seconds" })).toBe(42);
    await worker.stop();
  } finally {
    await troupe.close();
  }
};

/** The refusal a connect ends with; it must be a NatsFailure. */
const refusal = async (options: TroupeOptions): Promise<string> => {
  const outcome = await Troupe.connect({ connectTimeout: "3 seconds", ...options }).then(
    async (troupe) => {
      await troupe.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  expect(outcome).toBeInstanceOf(NatsFailure);
  return (outcome as NatsFailure).message;
};

describe("TLS", () => {
  it("with the CA that signed the server's certificate, a client and a worker run tasks", async () => {
    await roundTrip({ servers: tlsUrl(servers.tls), tls: { caFile: certs.caFile } });
  }, 60_000);

  it("a server certificate from a CA the client does not trust is refused, naming it", async () => {
    const [other, none] = await Promise.all([
      refusal({ servers: tlsUrl(servers.tls), tls: { caFile: certs.otherCaFile } }),
      refusal({ servers: tlsUrl(servers.tls) }),
    ]);
    expect(other).toMatch(/^cannot connect to NATS at tls:\/\/localhost:\d+: TLS: the server's certificate is not trusted \(.+\); it is not signed by the CA in .*stranger-ca\.pem$/);
    expect(none).toMatch(/TLS: the server's certificate is not trusted \(.+\); set tls\.caFile to the CA that signed it$/);
  }, 60_000);

  it("tls options against a server without TLS are refused", async () => {
    const message = await refusal({ servers: servers.token.url, token: "s3cret-token", tls: { caFile: certs.caFile } });
    expect(message).toMatch(/: TLS: the server does not offer TLS, but tls options were given$/);
  }, 60_000);
});

describe("mutual TLS (server verify: true)", () => {
  it("a client certificate signed by the server's CA is accepted: tasks run", async () => {
    await roundTrip({ servers: tlsUrl(servers.mtls), tls: { caFile: certs.caFile, certFile: certs.clientCert, keyFile: certs.clientKey } });
  }, 60_000);

  it("no client certificate, or one from another CA, is refused naming what is missing", async () => {
    const [missing, stranger] = await Promise.all([
      refusal({ servers: tlsUrl(servers.mtls), tls: { caFile: certs.caFile } }),
      refusal({ servers: tlsUrl(servers.mtls), tls: { caFile: certs.caFile, certFile: certs.strangerCert, keyFile: certs.strangerKey } }),
    ]);
    expect(missing).toMatch(/: TLS: the server requires a client certificate and none was given \(alert [a-z ]+\); set tls\.certFile and tls\.keyFile$/);
    expect(stranger).toMatch(/: TLS: the server refused the client certificate in .*stranger\.pem \(alert [a-z ]+\); is it signed by a CA the server trusts\?$/);
  }, 60_000);
});

describe("authorization", () => {
  it("a token, a user and password, an nkey and a .creds file each connect and run tasks", async () => {
    await roundTrip({ servers: servers.token.url, token: "s3cret-token" });
    await roundTrip({ servers: servers.users.url, user: "alice", pass: "alice-pw" });
    await roundTrip({ servers: servers.nkey.url, nkey: nkey.seedFile });
    await roundTrip({ servers: servers.creds.url, credentials: operator.credsFile });
  }, 90_000);

  it("a wrong or missing credential is refused at once, naming the credential", async () => {
    const [token, noToken, password, key, creds] = await Promise.all([
      refusal({ servers: servers.token.url, token: "wrong" }),
      refusal({ servers: servers.token.url }),
      refusal({ servers: servers.users.url, user: "alice", pass: "wrong" }),
      refusal({ servers: servers.nkey.url, nkey: otherNkey.seedFile }),
      refusal({ servers: servers.creds.url, credentials: operator.strangerCredsFile }),
    ]);
    expect(token).toMatch(/^cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+: authorization refused: the server rejected the token$/);
    expect(noToken).toMatch(/: authorization refused: the server requires a credential and none was given/);
    expect(password).toMatch(/: authorization refused: the server rejected user "alice" with its password$/);
    expect(key).toMatch(/: authorization refused: the server rejected the nkey in .*other\.nk$/);
    expect(creds).toMatch(/: authorization refused: the server rejected the credentials in .*stranger\.creds$/);
  }, 60_000);

  it("an accepted identity lacking a permission gets PermissionDenied naming the subject, at once", async () => {
    const outcome = await Troupe.connect({ servers: servers.users.url, user: "nojs", pass: "nojs-pw" }).then(
      async (troupe) => troupe.close(),
      (e: unknown) => e,
    );
    expect(outcome).toBeInstanceOf(PermissionDenied);
    expect((outcome as PermissionDenied).subject).toMatch(/^\$JS\.API\./);
  }, 60_000);

  it("an unreadable credentials or nkey file is a NatsFailure naming the file", async () => {
    const [creds, key] = await Promise.all([
      refusal({ servers: servers.creds.url, credentials: join(dir, "missing.creds") }),
      refusal({ servers: servers.nkey.url, nkey: join(dir, "missing.nk") }),
    ]);
    expect(creds).toMatch(/^cannot read the credentials file .*missing\.creds: ENOENT/);
    expect(key).toMatch(/^cannot read the nkey seed file .*missing\.nk: ENOENT/);
  }, 60_000);

  it("a server that never answers fails the connect after connectTimeout", async () => {
    // A port that accepts connections and never says a word, as a frozen server's does.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const url = `nats://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    try {
      const message = await refusal({ servers: url, connectTimeout: 1_000 });
      expect(message).toMatch(/: no answer from NATS within 1000 ms \(connectTimeout\)$/);
      await expect(Troupe.connect({ servers: url, connectTimeout: 5 })).rejects.toBeInstanceOf(InvalidOption);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  }, 60_000);
});

describe("the CLI", () => {
  it("a refused token or certificate is one line on stderr and exit 1", async () => {
    const env = { NATS_URL: undefined };
    const [token, ca, ok] = await Promise.all([
      runCli(["workers", "--server", servers.token.url, "--token", "wrong"], env),
      runCli(["workers", "--server", tlsUrl(servers.mtls), "--tls-ca", certs.caFile, "--connect-timeout", "3s"], env),
      runCli(["workers", "--json", "--server", servers.nkey.url, "--nkey", nkey.seedFile], env),
    ]);
    expect(token.code).toBe(1);
    expect(token.stdout).toBe("");
    expect(token.stderr).toMatch(/^troupe workers: NatsFailure: cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+: authorization refused: the server rejected the token\n$/);
    expect(ca.code).toBe(1);
    expect(ca.stderr).toMatch(/^troupe workers: NatsFailure: cannot connect to NATS at [^\n]+: TLS: the server requires a client certificate and none was given [^\n]+\n$/);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual([]);
  }, 90_000);
});
