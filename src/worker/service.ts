/**
 * A worker as a NATS micro service: `nats micro ls`, `nats micro info troupe-worker` and
 * `nats micro stats troupe-worker` list the workers, their tasks and their counters; the
 * JSON-RPC service `troupe-rpc` is one too. The protocol (discovery on
 * `$SRV.{PING,INFO,STATS}[.<name>[.<id>]]`, JSON replies typed `io.nats.micro.v1.*`) is
 * small enough to serve directly on the one connection.
 */
import { headers as natsHeaders, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { encodeJson } from "../nats/codec.js";

export interface EndpointSpec {
  readonly name: string;
  readonly subject: string;
  /** A queue group: one member of it answers each request (none: every instance hears it). */
  readonly queue?: string;
  /** Its reply, as JSON; bytes (a `Uint8Array`) are sent as they are, an empty one as an empty reply. */
  readonly handler: (msg: Msg) => Promise<unknown>;
  /** Extra figures for `nats micro stats` (the endpoint's `data`). */
  readonly data?: () => unknown;
}

interface EndpointState extends EndpointSpec {
  requests: number;
  errors: number;
  lastError: string;
  processingNs: number;
}

export interface ServiceIdentity {
  readonly name: string;
  readonly id: string;
  readonly version: string;
  readonly description: string;
  readonly metadata: Record<string, string>;
}

/**
 * Whether `msg` came to `subject` through a JetStream push consumer rather than from a
 * requester: a consumer's deliveries keep the stored message's own subject (and a `$JS.ACK`
 * reply), whatever deliver subject its creator chose. nats-server lets anyone who may create a
 * consumer pick that deliver subject without checking it may publish there, so a role allowed
 * to read could otherwise aim a consumer at `troupe.control.<worker>.shutdown`. Such a message
 * is dropped unanswered. Every endpoint subject is literal, so a request's subject equals it.
 */
export const relayed = (subject: string, msg: Pick<Msg, "subject" | "reply">): boolean => msg.subject !== subject || (msg.reply ?? "").startsWith("$JS.ACK.");

export class MicroService {
  private readonly subs: Subscription[] = [];
  private readonly endpoints: EndpointState[];
  private readonly started = new Date().toISOString();

  constructor(
    private readonly nc: NatsConnection,
    private readonly identity: ServiceIdentity,
    endpoints: ReadonlyArray<EndpointSpec>,
  ) {
    this.endpoints = endpoints.map((e) => ({ ...e, requests: 0, errors: 0, lastError: "", processingNs: 0 }));
  }

  start(): void {
    const { name, id } = this.identity;
    for (const verb of ["PING", "INFO", "STATS"] as const) {
      for (const subject of [`$SRV.${verb}`, `$SRV.${verb}.${name}`, `$SRV.${verb}.${name}.${id}`]) {
        this.subs.push(this.nc.subscribe(subject, { callback: (e, msg) => (e === null && !relayed(subject, msg) ? void msg.respond(encodeJson(this.discovery(verb))) : undefined) }));
      }
    }
    for (const endpoint of this.endpoints) {
      this.subs.push(
        this.nc.subscribe(endpoint.subject, {
          ...(endpoint.queue === undefined ? {} : { queue: endpoint.queue }),
          callback: (e, msg) => (e === null && !relayed(endpoint.subject, msg) ? void this.serve(endpoint, msg) : undefined),
        }),
      );
    }
  }

  stop(): void {
    for (const sub of this.subs.splice(0)) sub.unsubscribe();
  }

  private async serve(endpoint: EndpointState, msg: Msg): Promise<void> {
    const t0 = process.hrtime.bigint();
    endpoint.requests++;
    try {
      const reply = await endpoint.handler(msg);
      msg.respond(reply instanceof Uint8Array ? reply : encodeJson(reply));
    } catch (e) {
      endpoint.errors++;
      endpoint.lastError = e instanceof Error ? e.message : String(e);
      const h = natsHeaders();
      h.set("Nats-Service-Error", endpoint.lastError);
      h.set("Nats-Service-Error-Code", "500");
      msg.respond(undefined, { headers: h });
    } finally {
      endpoint.processingNs += Number(process.hrtime.bigint() - t0);
    }
  }

  private discovery(verb: "PING" | "INFO" | "STATS"): Record<string, unknown> {
    const { name, id, version, description, metadata } = this.identity;
    const base = { name, id, version, metadata };
    if (verb === "PING") return { type: "io.nats.micro.v1.ping_response", ...base };
    if (verb === "INFO") {
      return {
        type: "io.nats.micro.v1.info_response",
        ...base,
        description,
        endpoints: this.endpoints.map((e) => ({ name: e.name, subject: e.subject, queue_group: e.queue ?? "", metadata: {} })),
      };
    }
    return {
      type: "io.nats.micro.v1.stats_response",
      ...base,
      started: this.started,
      endpoints: this.endpoints.map((e) => ({
        name: e.name,
        subject: e.subject,
        queue_group: e.queue ?? "",
        num_requests: e.requests,
        num_errors: e.errors,
        last_error: e.lastError,
        processing_time: e.processingNs,
        average_processing_time: e.requests === 0 ? 0 : Math.round(e.processingNs / e.requests),
        data: e.data?.() ?? null,
      })),
    };
  }
}
