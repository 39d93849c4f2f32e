/**
 * The inspector: a small HTTP server that shows the actors of a live system.
 *
 * - `/`                       the page: actors live on the left, the selected one's machine
 *                             (drawn from the same definitions the hosts run) with its
 *                             current state lit, and its history
 * - `/api/machines`           the task, workflow and worker machines as XState JSON
 * - `/api/actors/:kind/:id`   an actor's record (KV) and its events (TROUPE_EVENTS)
 * - `/api/recent`             the last transitions (TROUPE_EVENTS), so the page opens populated
 * - `/events`                 every transition, live (server-sent events from `troupe.events.>`)
 *
 * Read-only: it subscribes and reads, never writes.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { DeliverPolicy } from "@nats-io/jetstream";
import { taskMachine } from "../../machines/task.js";
import { workflowMachine } from "../../machines/workflow.js";
import { workerMachine } from "../../machines/worker.js";
import { decodeJson } from "../nats/codec.js";
import { EVENTS_STREAM, EVENTS_SUBJECTS } from "../nats/topology.js";
import type { NatsHandle } from "../nats/connection.js";
import { PAGE } from "./page.js";

export interface Inspector {
  readonly url: string;
  readonly close: () => Promise<void>;
}

const KINDS = new Set(["task", "workflow", "worker"]);
const ID = /^[A-Za-z0-9_-]+$/;

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};

/** An actor's events, oldest first (at most `limit`). */
const history = async (nats: NatsHandle, kind: string, id: string, limit = 200): Promise<Array<{ event: string; record: unknown }>> => {
  const filter = `troupe.events.${kind}.${id}.>`;
  const info = await nats.jsm.streams.info(EVENTS_STREAM, { subjects_filter: filter });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  if (total === 0) return [];
  const consumer = await nats.js.consumers.get(EVENTS_STREAM, { filter_subjects: filter });
  const out: Array<{ event: string; record: unknown }> = [];
  const want = Math.min(total, limit);
  for await (const m of await consumer.fetch({ max_messages: want, expires: 2_000 })) {
    const decoded = decodeJson(m.data);
    out.push({ event: m.subject.split(".").at(-1) ?? "", record: decoded.ok ? decoded.value : null });
    if (out.length >= want) break;
  }
  return out;
};

/** The last `limit` events of the stream, oldest first. */
const recent = async (nats: NatsHandle, limit = 300): Promise<Array<{ kind: string; id: string; event: string; record: unknown }>> => {
  const info = await nats.jsm.streams.info(EVENTS_STREAM);
  if (info.state.messages === 0) return [];
  const start = Math.max(info.state.first_seq, info.state.last_seq - limit + 1);
  const consumer = await nats.js.consumers.get(EVENTS_STREAM, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start });
  const want = info.state.last_seq - start + 1;
  const out: Array<{ kind: string; id: string; event: string; record: unknown }> = [];
  for await (const m of await consumer.fetch({ max_messages: want, expires: 2_000 })) {
    const [, , kind = "", id = "", event = ""] = m.subject.split(".");
    const decoded = decodeJson(m.data);
    out.push({ kind, id, event, record: decoded.ok ? decoded.value : null });
    if (out.length >= want) break;
  }
  return out;
};

const current = async (nats: NatsHandle, kind: string, id: string): Promise<unknown> => {
  const bucket = kind === "task" ? nats.tasks : kind === "workflow" ? nats.workflows : nats.workers;
  const entry = await bucket.get(id);
  if (entry === null || entry.operation !== "PUT") return null;
  const decoded = decodeJson(entry.value);
  return decoded.ok ? decoded.value : null;
};

export const startInspector = async (nats: NatsHandle, options: { port?: number; host?: string } = {}): Promise<Inspector> => {
  const clients = new Set<ServerResponse>();
  const sub = nats.nc.subscribe(EVENTS_SUBJECTS, {
    callback: (_e, msg) => {
      if (clients.size === 0) return;
      const [, , kind, id, event] = msg.subject.split(".");
      const decoded = decodeJson(msg.data);
      const line = `data: ${JSON.stringify({ kind, id, event, record: decoded.ok ? decoded.value : null })}\n\n`;
      for (const res of clients) res.write(line);
    },
  });

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? "/", "http://inspector").pathname;
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
      return;
    }
    if (path === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    if (path === "/api/machines") {
      json(res, 200, { task: taskMachine.toJSON(), workflow: workflowMachine.toJSON(), worker: workerMachine.toJSON() });
      return;
    }
    if (path === "/api/recent") {
      json(res, 200, await recent(nats));
      return;
    }
    if (path === "/events") {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
      res.write(": troupe inspector\n\n");
      clients.add(res);
      req.on("close", () => clients.delete(res));
      return;
    }
    const actor = /^\/api\/actors\/([a-z]+)\/([^/]+)$/.exec(path);
    if (actor !== null) {
      const [, kind, id] = actor;
      if (!KINDS.has(kind!) || !ID.test(id!)) return json(res, 400, { error: "kind is task, workflow or worker; id is a Troupe id" });
      const [record, events] = await Promise.all([current(nats, kind!, id!), history(nats, kind!, id!)]);
      if (record === null && events.length === 0) return json(res, 404, { error: `no ${kind} ${id}` });
      json(res, 200, { kind, id, record, events });
      return;
    }
    json(res, 404, { error: "not found" });
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => json(res, 500, { error: e instanceof Error ? e.message : String(e) }));
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, options.host ?? "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${options.host ?? "127.0.0.1"}:${port}`,
    close: async () => {
      sub.unsubscribe();
      for (const res of clients) res.end();
      clients.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};
