/**
 * Throwaway certificates for the TLS tests, made with `openssl` at run time: a CA, a server
 * certificate for 127.0.0.1/localhost, a client certificate, and a second CA nobody trusts.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface TestCertificates {
  readonly dir: string;
  readonly caFile: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** A CA that signed nothing the server presents. */
  readonly otherCaFile: string;
  /** A client certificate signed by the other CA: the server must refuse it. */
  readonly strangerCert: string;
  readonly strangerKey: string;
  readonly remove: () => Promise<void>;
}

const openssl = async (...args: string[]) => {
  await run("openssl", args, { timeout: 30_000 });
};

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

const makeCa = async (dir: string, name: string) => {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.pem`);
  await openssl("req", "-x509", ...EC, "-keyout", key, "-out", cert, "-days", "2", "-subj", `/CN=${name}`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  return { key, cert };
};

const makeLeaf = async (dir: string, name: string, ca: { key: string; cert: string }, extensions: string) => {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.pem`);
  const ext = join(dir, `${name}.ext`);
  await writeFile(ext, extensions);
  await openssl("req", "-new", ...EC, "-keyout", key, "-out", csr, "-subj", `/CN=${name}`);
  await openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext);
  return { key, cert };
};

export const makeCertificates = async (): Promise<TestCertificates> => {
  const dir = await mkdtemp(join(tmpdir(), "troupe-certs-"));
  const ca = await makeCa(dir, "troupe-test-ca");
  const other = await makeCa(dir, "stranger-ca");
  const server = await makeLeaf(dir, "server", ca,
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n");
  const client = await makeLeaf(dir, "client", ca, "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n");
  const stranger = await makeLeaf(dir, "stranger", other, "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n");
  return {
    dir,
    caFile: ca.cert,
    serverCert: server.cert,
    serverKey: server.key,
    clientCert: client.cert,
    clientKey: client.key,
    otherCaFile: other.cert,
    strangerCert: stranger.cert,
    strangerKey: stranger.key,
    remove: () => rm(dir, { recursive: true, force: true }),
  };
};
