/**
 * What guards the inspector's and the Stately bridge's HTTP servers: a token made at each
 * start, the names the server answers to (`Host`), the pages that may call it (`Origin`), and
 * the headers that keep its pages out of frames and its answers from being sniffed.
 *
 * - The token comes as `?token=` (the URL the CLI prints), an `Authorization: Bearer` header,
 *   or the cookie the page's first load sets (HttpOnly, SameSite=Strict, named by the port:
 *   cookies are not kept apart by port).
 * - `Host` must name this server: on a loopback address its loopback names; on another address
 *   that address; on `0.0.0.0` or `::` also the machine's name and interface addresses. A page
 *   elsewhere whose name was rebound to this address (DNS rebinding) is refused.
 * - `Origin`, when a request carries one, must be this server's own.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { hostname, networkInterfaces } from "node:os";

/** A token of 256 random bits, URL-safe. */
export const newToken = (): string => randomBytes(32).toString("base64url");

const LOOPBACK = ["127.0.0.1", "localhost", "::1"];
const WILDCARD = ["0.0.0.0", "::", ""];

/** `host:port` as a `Host` header writes it (an IPv6 address in brackets), lower case. */
const hostPort = (host: string, port: number) => `${host.includes(":") ? `[${host}]` : host}:${port}`.toLowerCase();

export interface WebGuard {
  readonly token: string;
  /** The cookie's name (`troupe-<what>-<port>`). */
  readonly cookie: string;
  /** Whether `Host` names this server. */
  hostAllowed(host: string | undefined): boolean;
  /** Whether the request's `Origin` (if it has one) is this server's own. */
  originAllowed(origin: string | undefined): boolean;
  /** Whether the request carries this start's token (query, bearer header or cookie). */
  authorized(req: IncomingMessage, url: URL): boolean;
  /** The `Set-Cookie` value that keeps the token for the page's later requests. */
  setCookie(): string;
}

/** Compares in constant time: a wrong token's first bytes say nothing. */
const same = (given: string | undefined, token: string): boolean => {
  if (given === undefined) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
};

const cookieValue = (header: string | undefined, name: string): string | undefined => {
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
};

/** The names a server bound to `bound` on `port` answers to. */
export const allowedHosts = (bound: string, port: number, extra: ReadonlyArray<string> = []): Set<string> => {
  const names = new Set<string>();
  const add = (h: string) => names.add(hostPort(h, port));
  if (LOOPBACK.includes(bound) || WILDCARD.includes(bound)) LOOPBACK.forEach(add);
  if (!LOOPBACK.includes(bound) && !WILDCARD.includes(bound)) add(bound);
  if (WILDCARD.includes(bound)) {
    add(hostname());
    for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) add(i.address);
  }
  for (const h of extra) add(h);
  return names;
};

export const webGuard = (what: string, bound: string, port: number, extraHosts: ReadonlyArray<string> = []): WebGuard => {
  const token = newToken();
  const hosts = allowedHosts(bound, port, extraHosts);
  const origins = new Set([...hosts].map((h) => `http://${h}`));
  const cookie = `troupe-${what}-${port}`;
  return {
    token,
    cookie,
    hostAllowed: (host) => host !== undefined && hosts.has(host.toLowerCase()),
    originAllowed: (origin) => origin === undefined || origins.has(origin.toLowerCase()),
    authorized: (req, url) => {
      const bearer = /^Bearer (.+)$/i.exec(req.headers.authorization ?? "")?.[1];
      return same(url.searchParams.get("token") ?? undefined, token) || same(bearer, token) || same(cookieValue(req.headers.cookie, cookie), token);
    },
    setCookie: () => `${cookie}=${token}; Path=/; HttpOnly; SameSite=Strict`,
  };
};

/** The CSP of an answer that is not a page: nothing loads, nothing frames it. */
export const NO_CONTENT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/** Headers every answer carries: not framed, not sniffed, no referrer, not cached. */
export const guardHeaders = (res: ServerResponse, policy = NO_CONTENT_POLICY): void => {
  res.setHeader("content-security-policy", policy);
  res.setHeader("x-frame-options", "DENY");
  res.setHeader("x-content-type-options", "nosniff");
  res.setHeader("referrer-policy", "no-referrer");
  res.setHeader("cross-origin-opener-policy", "same-origin");
  res.setHeader("cross-origin-resource-policy", "same-origin");
};

/** The `sha256-…` source of an inline script or style, for a CSP. */
export const inlineHash = (text: string): string => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`;

/** The text of each `<tag>…</tag>` in `html` (the inline scripts or styles a CSP must name). */
export const inlineBlocks = (html: string, tag: "script" | "style"): string[] =>
  [...html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, "g"))].map((m) => m[1] ?? "");
