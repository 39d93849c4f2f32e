// Attacks on the two HTTP servers Troupe starts, the inspector (`troupe inspect`) and the Stately
// bridge (`troupe inspect --stately`): each is reached without its token, with a wrong one, from
// another origin, under another host name, framed, made to fail, and asked to act. Each is refused.
import { request } from "node:http";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { defineTask, Schema, Troupe } from "../../src/index.js";
import { connectionOf, serveStately, startInspector } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
const stops: Array<() => Promise<void>> = [];
afterEach(async () => {
  await Promise.all(stops.splice(0).map((stop) => stop()));
  await closeAll();
});

const echo = defineTask({ name: "web.echo", input: Schema.String, output: Schema.String, handler: async (s) => s });

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** One request with exactly these headers (`host` too: fetch would not send another one); a stream's first bytes only. */
const send = (url: string, options: { method?: string; headers?: Record<string, string> } = {}) =>
  new Promise<Answer>((resolve, reject) => {
    const req = request(url, { method: options.method ?? "GET", headers: options.headers ?? {}, timeout: 10_000 }, (res) => {
      let body = "";
      const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      res.on("data", (d: Buffer) => {
        body += d.toString();
        // An event stream stays open: its first bytes are enough.
        if (res.headers["content-type"] === "text/event-stream") {
          req.destroy();
          done();
        }
      });
      res.on("end", done);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer from ${url}`)));
    req.on("error", reject);
    req.end();
  });

/** What every answer must say so that no page can frame it or make it sniff a type. */
const expectNotFramable = (a: Answer) => {
  expect(a.headers["x-frame-options"]).toBe("DENY");
  expect(a.headers["content-security-policy"]).toMatch(/(^|; )frame-ancestors 'none'(;|$)/);
  expect(a.headers["x-content-type-options"]).toBe("nosniff");
  expect(a.headers["referrer-policy"]).toBe("no-referrer");
};

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const WRONG = "A".repeat(43);

describe("the inspector", () => {
  it("refuses every request without this start's token, with a wrong one, or with another start's", async () => {
    const troupe = await connect(server());
    const inspector = await startInspector(connectionOf(troupe));
    stops.push(inspector.close);
    const other = await startInspector(connectionOf(troupe));
    stops.push(other.close);
    expect(inspector.token).not.toBe(other.token);
    expect(inspector.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(inspector.link).toBe(`${inspector.url}/?token=${inspector.token}`);

    for (const path of ["/", "/api/recent", "/api/machines", "/api/config", "/api/queues", "/api/actors/task/x", "/api/logs?task=x", "/events"]) {
      for (const headers of ([{}, bearer(WRONG), bearer(other.token), { cookie: `troupe-inspector-${new URL(inspector.url).port}=${WRONG}` }] as Array<Record<string, string>>)) {
        const a = await send(`${inspector.url}${path}`, { headers });
        expect(a.status, `${path} ${JSON.stringify(headers)}`).toBe(401);
        expectNotFramable(a);
        expect(a.body).not.toContain("data:");
      }
    }
    expect((await send(`${inspector.url}/api/recent?token=${WRONG}`)).status).toBe(401);
    expect((await send(`${inspector.url}/api/tasks/x/retry`, { method: "POST", headers: { "x-troupe-action": "1" } })).status).toBe(401);

    // With the token: in the address, as a bearer, or in the cookie the page's first load sets.
    const page = await send(inspector.link);
    expect(page.status).toBe(200);
    expect(page.body).toContain("Troupe inspector");
    const cookie = String(page.headers["set-cookie"]).split(";")[0]!;
    expect(page.headers["set-cookie"]).toEqual([`${cookie}; Path=/; HttpOnly; SameSite=Strict`]);
    expect((await send(`${inspector.url}/api/config`, { headers: { cookie } })).status).toBe(200);
    expect((await send(`${inspector.url}/api/config`, { headers: bearer(inspector.token) })).status).toBe(200);
    expect((await send(`${inspector.url}/events?token=${inspector.token}`)).status).toBe(200);
  });

  it("answers only under its own host names, to its own page, on any address", async () => {
    const troupe = await connect(server());
    // On every interface: its Host check holds there too (it held only on loopback).
    const inspector = await startInspector(connectionOf(troupe), { host: "0.0.0.0" });
    stops.push(inspector.close);
    const port = new URL(inspector.url).port;
    const base = `http://127.0.0.1:${port}`;
    const auth = bearer(inspector.token);
    expect((await send(`${base}/api/config`, { headers: auth })).status).toBe(200);
    for (const host of ["evil.example", `evil.example:${port}`, "127.0.0.1.nip.io:" + port, `127.0.0.1:${Number(port) + 1}`]) {
      const a = await send(`${base}/api/recent`, { headers: { ...auth, host } });
      expect(a.status, host).toBe(421);
      expectNotFramable(a);
    }
    // A page elsewhere (another origin, another port of this host, a sandboxed frame) may not call it, even with the token.
    for (const origin of ["https://evil.example", `http://127.0.0.1:${Number(port) + 1}`, "null", `https://127.0.0.1:${port}`]) {
      for (const [method, path] of [["GET", "/api/recent"], ["GET", "/events"], ["POST", "/api/tasks/x/retry"]] as const) {
        const a = await send(`${base}${path}`, { method, headers: { ...auth, origin, "x-troupe-action": "1" } });
        expect(a.status, `${origin} ${method} ${path}`).toBe(403);
      }
    }
    expect((await send(`${base}/api/config`, { headers: { ...auth, origin: base } })).status).toBe(200);
    expect((await send(`${base}/api/config`, { headers: { ...auth, host: `localhost:${port}`, origin: `http://localhost:${port}` } })).status).toBe(200);
  });

  it("may not be framed: its page and its API say so, and its page runs only its own script", async () => {
    const troupe = await connect(server());
    const inspector = await startInspector(connectionOf(troupe));
    stops.push(inspector.close);
    const page = await send(inspector.link);
    expectNotFramable(page);
    const csp = String(page.headers["content-security-policy"]);
    expect(csp).toMatch(/(^|; )default-src 'none'(;|$)/);
    expect(csp).toMatch(/(^|; )script-src 'sha256-[A-Za-z0-9+/]+=*'(;|$)/);
    expect(csp).not.toContain("unsafe-inline");
    expect(csp).not.toContain("unsafe-eval");
    expectNotFramable(await send(`${inspector.url}/api/recent`, { headers: bearer(inspector.token) }));
  });

  it("answers a failure with a generic 500, the error in its log only", async () => {
    const troupe = await Troupe.connect({ servers: server().url, logger: pino({ level: "silent" }) });
    const lines: string[] = [];
    const logger = pino({ level: "error" }, new Writable({ write: (chunk: Buffer, _e, next) => (lines.push(chunk.toString()), next()) }));
    const inspector = await startInspector(connectionOf(troupe), { logger });
    stops.push(inspector.close);
    // Its connection gone, every read fails.
    await troupe.close();
    const a = await send(`${inspector.url}/api/recent`, { headers: bearer(inspector.token) });
    expect(a.status).toBe(500);
    expect(JSON.parse(a.body)).toEqual({ error: "the inspector failed to answer (its log says why)" });
    expectNotFramable(a);
    expect(lines.join("")).toMatch(/inspector request failed/);
    expect(lines.join("")).toMatch(/closed/i);
  });

  it("acts only when started with actions, and then only from its own page with the action header", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [echo] });
    const run = await troupe.submit(echo, "x");
    await run.result();
    const readOnly = await startInspector(connectionOf(troupe));
    stops.push(readOnly.close);
    const refused = await send(`${readOnly.url}/api/tasks/${run.id}/retry`, { method: "POST", headers: { ...bearer(readOnly.token), "x-troupe-action": "1", origin: readOnly.url } });
    expect(refused.status).toBe(405);
    expect(JSON.parse(refused.body)).toEqual({ error: "this inspector does not act: start it with `troupe inspect --actions`" });
    expect(JSON.parse((await send(`${readOnly.url}/api/config`, { headers: bearer(readOnly.token) })).body)).toEqual({ actions: false });

    const called: string[] = [];
    const acting = await startInspector(connectionOf(troupe), { actions: { retry: async (id) => called.push(id) } });
    stops.push(acting.close);
    const action = (headers: Record<string, string>) => send(`${acting.url}/api/tasks/${run.id}/retry`, { method: "POST", headers });
    expect((await action({ "x-troupe-action": "1", origin: acting.url })).status).toBe(401);
    expect((await action({ ...bearer(acting.token), origin: acting.url })).status).toBe(403);
    expect((await action({ ...bearer(acting.token), "x-troupe-action": "1", origin: "https://evil.example" })).status).toBe(403);
    expect(called).toEqual([]);
    expect((await action({ ...bearer(acting.token), "x-troupe-action": "1", origin: acting.url })).status).toBe(200);
    expect(called).toEqual([run.id]);
  });
});

describe("the Stately bridge", () => {
  it("listens on 127.0.0.1 and refuses every request without its token, from another origin or under another name", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [echo] });
    const run = await troupe.submit(echo, "secret-input");
    await run.result();
    const stately = await serveStately(troupe, `task:${run.id}`);
    stops.push(stately.close);
    expect(new URL(stately.url).hostname).toBe("127.0.0.1");
    const port = new URL(stately.url).port;

    // Its stream replays the task's records: without the token, nothing.
    for (const path of ["/", "/events", "/events?token=" + WRONG]) {
      for (const headers of ([{}, bearer(WRONG), { cookie: `troupe-stately-${port}=${WRONG}` }] as Array<Record<string, string>>)) {
        const a = await send(`${stately.url}${path}`, { headers });
        expect(a.status, `${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(a.body).not.toContain("secret-input");
        expectNotFramable(a);
      }
    }
    const auth = bearer(stately.token);
    for (const host of ["evil.example", `evil.example:${port}`, `127.0.0.1:${Number(port) + 1}`]) {
      expect((await send(`${stately.url}/events`, { headers: { ...auth, host } })).status, host).toBe(421);
    }
    // A page elsewhere, even Stately's own origin: only the bridge's page reads the stream (it hands the events to Stately's frame).
    for (const origin of ["https://evil.example", "https://stately.ai", "null", `http://localhost:${Number(port) + 1}`]) {
      const a = await send(`${stately.url}/events`, { headers: { ...auth, origin } });
      expect(a.status, origin).toBe(403);
      expect(a.body).not.toContain("secret-input");
    }
    expect((await send(`${stately.url}/events`, { method: "POST", headers: auth })).status).toBe(405);

    // With the token, from its own page: the records.
    const own = await send(`${stately.url}/events`, { headers: { ...auth, origin: stately.url } });
    expect(own.status).toBe(200);
    const page = await send(stately.link);
    expect(page.status).toBe(200);
    expectNotFramable(page);
    expect(String(page.headers["content-security-policy"])).toMatch(/(^|; )frame-src https:\/\/stately\.ai(;|$)/);
  });
});
