/**
 * NATS identities for the auth tests, made with the nkeys the client ships: a user nkey,
 * and a decentralized-auth setup (operator, account, user JWTs signed by hand, the way
 * `nsc` signs them) with the user's `.creds` file.
 */
import { createHash } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { nkeys } from "@nats-io/transport-node";

type KeyPair = ReturnType<typeof nkeys.createUser>;

const text = new TextDecoder();
const b64url = (data: Uint8Array | string) => Buffer.from(data).toString("base64url");

const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const base32 = (data: Uint8Array): string => {
  let bits = 0;
  let value = 0;
  let out = "";
  for (const byte of data) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
};

/** A JWT (`alg: ed25519-nkey`) of `nats` claims about `subject`, signed by `issuer`. */
const signJwt = (issuer: KeyPair, subject: string, name: string, nats: Record<string, unknown>): string => {
  const claims: Record<string, unknown> = { jti: "", iat: Math.floor(Date.now() / 1000), iss: issuer.getPublicKey(), name, sub: subject, nats };
  claims.jti = base32(createHash("sha512-256").update(JSON.stringify(claims)).digest());
  const unsigned = `${b64url(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }))}.${b64url(JSON.stringify(claims))}`;
  return `${unsigned}.${b64url(issuer.sign(new TextEncoder().encode(unsigned)))}`;
};

export interface UserNkey {
  readonly publicKey: string;
  /** The seed file's path (`nkey` option). */
  readonly seedFile: string;
}

export const makeUserNkey = async (dir: string, name: string): Promise<UserNkey> => {
  const user = nkeys.createUser();
  const seedFile = join(dir, `${name}.nk`);
  await writeFile(seedFile, `${text.decode(user.getSeed())}\n`, { mode: 0o600 });
  return { publicKey: user.getPublicKey(), seedFile };
};

export interface Decentralized {
  /** Server config lines: operator, memory resolver preloaded with the account. */
  readonly serverConfig: string;
  /** A user of the account: its `.creds` file. */
  readonly credsFile: string;
  /** A user signed by an account the server does not know. */
  readonly strangerCredsFile: string;
}

const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };

const writeCreds = async (file: string, jwt: string, user: KeyPair) => {
  await writeFile(
    file,
    `-----BEGIN NATS USER JWT-----\n${jwt}\n------END NATS USER JWT------\n\n` +
      `-----BEGIN USER NKEY SEED-----\n${text.decode(user.getSeed())}\n------END USER NKEY SEED------\n`,
    { mode: 0o600 },
  );
};

export const makeDecentralized = async (dir: string): Promise<Decentralized> => {
  const operator = nkeys.createOperator();
  const system = nkeys.createAccount();
  const account = nkeys.createAccount();
  const stranger = nkeys.createAccount();
  const operatorJwt = signJwt(operator, operator.getPublicKey(), "troupe-test-operator", { type: "operator", version: 2 });
  const accountJwt = (a: KeyPair, name: string, jetstream: boolean) =>
    signJwt(operator, a.getPublicKey(), name, {
      type: "account",
      version: 2,
      limits: { ...UNLIMITED, ...(jetstream ? { mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 } : {}) },
    });
  const userJwt = (a: KeyPair, user: KeyPair) =>
    signJwt(a, user.getPublicKey(), "troupe-test-user", { type: "user", version: 2, pub: {}, sub: {}, subs: -1, data: -1, payload: -1 });
  const user = nkeys.createUser();
  const other = nkeys.createUser();
  const credsFile = join(dir, "user.creds");
  const strangerCredsFile = join(dir, "stranger.creds");
  await writeCreds(credsFile, userJwt(account, user), user);
  await writeCreds(strangerCredsFile, userJwt(stranger, other), other);
  const serverConfig = [
    `operator: ${operatorJwt}`,
    `system_account: ${system.getPublicKey()}`,
    "resolver: MEMORY",
    "resolver_preload: {",
    `  ${system.getPublicKey()}: ${accountJwt(system, "SYS", false)}`,
    `  ${account.getPublicKey()}: ${accountJwt(account, "TROUPE", true)}`,
    "}",
  ].join("\n");
  return { serverConfig, credsFile, strangerCredsFile };
};
