/**
 * Why a connection to NATS failed, in one line naming what the server refused: the
 * credential (authorization), the certificate (TLS), or nothing answering in time.
 *
 * Under TLS 1.3 a server that refuses the client's certificate says so only after the
 * client's side of the handshake is done, and the NATS client then just waits for its
 * timeout; so a timeout on a TLS server is explained by one handshake of our own.
 */
import { readFile } from "node:fs/promises";
import { createConnection, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { NatsFailure } from "../errors.js";

/** What the client offered: the subset of `ConnectOptions` a failure is explained by. */
export interface OfferedIdentity {
  readonly user?: string;
  readonly token?: string;
  readonly credentials?: string;
  readonly nkey?: string;
  readonly tls?: { readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string };
}

/** The credential a client offered, as a refusal names it ("" for none). */
export const offeredCredential = (o: OfferedIdentity): string => {
  if (o.credentials !== undefined) return `the credentials in ${o.credentials}`;
  if (o.nkey !== undefined) return `the nkey in ${o.nkey}`;
  if (o.user !== undefined) return `user "${o.user}" with its password`;
  if (o.token !== undefined) return "the token";
  return "";
};

const TRUST_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_UNTRUSTED",
  "CERT_SIGNATURE_FAILURE",
]);

const errorCode = (e: unknown): string | undefined => {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
};

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** A TLS error from Node or the server's alert, explained; undefined when it is not one. */
const explainTls = (e: unknown, o: OfferedIdentity): string | undefined => {
  const code = errorCode(e) ?? errorCode((e as { cause?: unknown } | null)?.cause);
  // OpenSSL's alerts come as "...:SSL routines:...:alert bad certificate:...": keep the alert.
  const raw = messageOf(e);
  const message = /alert [a-z ]+/i.exec(raw)?.[0] ?? raw;
  if (code !== undefined && TRUST_CODES.has(code)) {
    return `TLS: the server's certificate is not trusted (${message}); ${o.tls?.caFile === undefined ? "set tls.caFile to the CA that signed it" : `it is not signed by the CA in ${o.tls.caFile}`}`;
  }
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") return `TLS: the server's certificate is not valid now (${message})`;
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return `TLS: the server's certificate does not name the host connected to (${message})`;
  const refused = /alert (certificate required|bad certificate|unknown ca|certificate unknown|unsupported certificate|access denied)/i.test(message);
  if (refused && o.tls?.certFile === undefined) {
    return `TLS: the server requires a client certificate and none was given (${message}); set tls.certFile and tls.keyFile`;
  }
  if (refused) {
    return `TLS: the server refused the client certificate${o.tls?.certFile === undefined ? "" : ` in ${o.tls.certFile}`} (${message}); is it signed by a CA the server trusts?`;
  }
  if (/does not support 'tls'/.test(message)) return "TLS: the server does not offer TLS, but tls options were given";
  if (code === "ENOENT" || code === "EACCES") return `TLS: cannot read a certificate or key file (${message})`;
  return undefined;
};

interface ServerInfo {
  readonly tls_required?: boolean;
  readonly tls_available?: boolean;
}

const hostPort = (server: string): { host: string; port: number } => {
  const url = new URL(server.includes("://") ? server : `nats://${server}`);
  return { host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || 4222) };
};

/** The server's INFO line, read off a fresh socket. */
const readInfo = (socket: Socket): Promise<ServerInfo> =>
  new Promise((resolve, reject) => {
    let text = "";
    socket.on("data", (d: Buffer) => {
      text += d.toString("utf8");
      const end = text.indexOf("\r\n");
      if (end < 0) return;
      socket.removeAllListeners("data");
      try {
        resolve(JSON.parse(text.slice(0, end).replace(/^INFO\s+/, "")) as ServerInfo);
      } catch (e) {
        reject(e);
      }
    });
    socket.once("error", reject);
    socket.once("close", () => reject(new Error("closed before INFO")));
  });

/**
 * One TLS handshake with the server, as the client would make it, waiting `settleMs` after
 * it for an alert; the error it ends with, or undefined when it went through.
 */
const probeTls = async (server: string, o: OfferedIdentity, boundMs: number): Promise<unknown> => {
  const { host, port } = hostPort(server);
  const socket = createConnection(port, host);
  const timer = setTimeout(() => socket.destroy(new Error("probe timed out")), boundMs);
  try {
    await new Promise<void>((res, rej) => {
      socket.once("connect", () => res());
      socket.once("error", rej);
    });
    const info = await readInfo(socket);
    if (!info.tls_required && !(o.tls !== undefined && info.tls_available)) {
      return o.tls === undefined ? undefined : new Error("server does not support 'tls'");
    }
    const [ca, cert, key] = await Promise.all(
      [o.tls?.caFile, o.tls?.certFile, o.tls?.keyFile].map((f) => (f === undefined ? undefined : readFile(f))),
    );
    const secure = tlsConnect({
      socket,
      servername: /^[\d.:]+$/.test(host) ? undefined : host,
      rejectUnauthorized: true,
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined ? {} : { cert }),
      ...(key === undefined ? {} : { key }),
    });
    return await new Promise<unknown>((res) => {
      secure.once("error", (e) => res(e));
      secure.once("secureConnect", () => {
        // A refusal of our certificate comes as an alert just after the handshake.
        secure.write("PING\r\n");
        setTimeout(() => res(undefined), 3_000);
      });
      secure.once("close", () => res(undefined));
    }).finally(() => secure.destroy());
  } catch (e) {
    return e;
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
};

/**
 * The `NatsFailure` for a failed connect: "cannot connect to NATS at <servers>: authorization
 * refused: ...", "...: TLS: ...", or what the client said.
 */
export const connectFailure = async (
  servers: ReadonlyArray<string>,
  o: OfferedIdentity,
  cause: unknown,
  timeoutMs: number,
): Promise<NatsFailure> => {
  const name = (cause as { name?: unknown } | null)?.name;
  const message = messageOf(cause);
  let reason: string;
  if (name === "AuthorizationError" || /authorization violation/i.test(message)) {
    const offered = offeredCredential(o);
    reason = offered === ""
      ? "authorization refused: the server requires a credential and none was given (user/pass, token, nkey or credentials)"
      : `authorization refused: the server rejected ${offered}`;
  } else if (name === "UserAuthenticationExpiredError") {
    reason = `authorization refused: ${offeredCredential(o)} expired`;
  } else if (name === "TimeoutError" || message === "timeout") {
    const probed = servers[0] === undefined ? undefined : await probeTls(servers[0], o, Math.max(timeoutMs, 8_000));
    reason =
      (probed === undefined ? undefined : explainTls(probed, o)) ??
      `no answer from NATS within ${timeoutMs} ms (connectTimeout)`;
  } else {
    reason = explainTls(cause, o) ?? message;
  }
  return new NatsFailure({ message: `cannot connect to NATS at ${servers.join(",")}: ${reason}`, cause });
};
