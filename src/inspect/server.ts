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
 * - `POST /api/tasks/:id/retry` a FAILED or CANCELLED task run again, when the inspector was
 *                             given `actions` (the CLI's do: the same SDK call as `troupe retry`)
 *
 * Otherwise read-only: it subscribes and reads.
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
import { readHistory } from "../nats/history.js";

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

/** What the page's buttons do: the SDK's calls. */
export interface InspectorActions {
  readonly retry: (id: string) => Promise<unknown>;
}

export const startInspector = async (nats: NatsHandle, options: { port?: number; host?: string; actions?: InspectorActions } = {}): Promise<Inspector> => {
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
    const retry = /^\/api\/tasks\/([^/]+)\/retry$/.exec(path);
    if (retry !== null && req.method === "POST") {
      const id = retry[1]!;
      if (options.actions === undefined) return json(res, 405, { error: "this inspector is read-only" });
      // A header no cross-site form can send (nor a script elsewhere without a CORS preflight, never granted).
      if (req.headers["x-troupe-action"] !== "1") return json(res, 403, { error: "actions need the header X-Troupe-Action: 1" });
      if (!ID.test(id)) return json(res, 400, { error: "not a task id" });
      const done = await options.actions.retry(id).then(
        () => undefined,
        (e: unknown) => (e instanceof Error ? e.message : String(e)),
      );
      return json(res, done === undefined ? 200 : 409, done === undefined ? { id, status: "QUEUED" } : { error: done });
    }
    const actor = /^\/api\/actors\/([a-z]+)\/([^/]+)$/.exec(path);
    if (actor !== null) {
      const [, kind, id] = actor;
      if (!KINDS.has(kind!) || !ID.test(id!)) return json(res, 400, { error: "kind is task, workflow or worker; id is a Troupe id" });
      const [record, events] = await Promise.all([current(nats, kind!, id!), readHistory(nats, kind!, id!, 200)]);
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
