/**
 * A TCP proxy in front of a nats-server: cutting it takes a client's server away while the
 * server runs on; `dropping` makes it lose the messages the server delivers to the client on
 * some subjects (a core publish lost on the way), reading the NATS protocol as it passes.
 */
import { createServer, connect, type Socket } from "node:net";
import { Transform, type TransformCallback } from "node:stream";

export interface Proxy {
  readonly url: string;
  /** Drop every connection and refuse new ones. */
  cut(): Promise<void>;
  /**
   * From now on, messages delivered to the client that `drop` says yes to are lost
   * (`undefined`: none); it is given the subject and the frame's payload, headers included.
   */
  dropping(drop: Drop | undefined): void;
  /** How many messages were dropped so far. */
  readonly dropped: number;
}

const CRLF = Buffer.from("\r\n");

type Drop = (subject: string, payload: Buffer) => boolean;

/** The server → client direction, frame by frame: `MSG`/`HMSG` frames a predicate drops are left out. */
class Deliveries extends Transform {
  private pending: Buffer = Buffer.alloc(0);

  constructor(private readonly state: { drop: Drop | undefined; dropped: number }) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      const eol = this.pending.indexOf(CRLF);
      if (eol < 0) break;
      const line = this.pending.subarray(0, eol).toString("latin1");
      let size = 0;
      if (line.startsWith("MSG ") || line.startsWith("HMSG ")) {
        const parts = line.split(" ");
        size = Number(parts[parts.length - 1]) + 2; // the payload (headers included) and its CRLF
      }
      const frame = eol + 2 + size;
      if (this.pending.length < frame) break;
      const subject = size > 0 ? line.split(" ")[1]! : "";
      if (size > 0 && this.state.drop?.(subject, this.pending.subarray(eol + 2, frame - 2))) this.state.dropped++;
      else out.push(this.pending.subarray(0, frame));
      this.pending = this.pending.subarray(frame);
    }
    done(null, out.length === 0 ? undefined : Buffer.concat(out));
  }
}

export const startProxy = async (target: { host: string; port: number }): Promise<Proxy> => {
  const sockets = new Set<Socket>();
  const state: { drop: Drop | undefined; dropped: number } = { drop: undefined, dropped: 0 };
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => s.destroy());
    }
    client.pipe(upstream);
    upstream.pipe(new Deliveries(state)).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  return {
    url: `nats://127.0.0.1:${port}`,
    cut: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
    dropping: (drop) => {
      state.drop = drop;
    },
    get dropped() {
      return state.dropped;
    },
  };
};
