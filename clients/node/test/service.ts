// The real service for the tests: `its-camera-ai serve all` in a process of its own, on
// free loopback ports, over mTLS (certificates from `its-camera-ai certs`), accepting only
// JWTs signed by a key this module generates (no anonymous callers), on a fresh database.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync, randomBytes, sign, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";

import { connect, type TlsOptions } from "../src";

const PACKAGE_ROOT = resolve(__dirname, "..", "..");
const SERVICE_BIN = process.env.ITS_CAMERA_AI_BIN ?? resolve(PACKAGE_ROOT, "../../.venv/bin/its-camera-ai");
// The same variable (and default) as the Python tests' conftest.
const ADMIN_DSN = process.env.ITS_TEST_POSTGRES_DSN ?? "postgresql://postgres@127.0.0.1:5432/postgres";
const ISSUER = "https://issuer.node-test";
const AUDIENCE = "its-camera-ai";
const START_TIMEOUT_MS = 90_000;
const STOP_TIMEOUT_MS = 20_000;

export interface TokenOptions {
  subject?: string;
  lifetimeS?: number;
  /** Sign with a key the server does not know. */
  foreignKey?: boolean;
}

export interface RunningService {
  target: string;
  /** The CA and the client certificate the server requires. */
  tls: TlsOptions;
  /** A JWT for `role`, signed by the server's issuer key unless `foreignKey`. */
  token(role: string, options?: TokenOptions): string;
  /** Runs SQL on the service's database (as analytics would write rows). */
  sql(statement: string): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

function dsnFor(database: string): string {
  const [head = "", query] = ADMIN_DSN.split("?", 2);
  return `${head.slice(0, head.lastIndexOf("/"))}/${database}${query ? `?${query}` : ""}`;
}

function psql(dsn: string, statement: string): string {
  return execFileSync("psql", [dsn, "-v", "ON_ERROR_STOP=1", "-Atqc", statement], { encoding: "utf8" });
}

function base64url(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

function signJwt(claims: object, key: KeyObject, kid: string): string {
  const signed = `${base64url({ alg: "ES256", typ: "JWT", kid })}.${base64url(claims)}`;
  const signature = sign("sha256", Buffer.from(signed), { key, dsaEncoding: "ieee-p1363" });
  return `${signed}.${signature.toString("base64url")}`;
}

function writeConfig(directory: string, grpcPort: number, httpPort: number, jwksFile: string): string {
  const certs = join(directory, "certs");
  const config = {
    environment: "dev",
    grpc: { host: "127.0.0.1", port: grpcPort, drain_seconds: 0.5 },
    http: { host: "127.0.0.1", port: httpPort },
    logging: { level: "WARNING", format: "text" },
    security: {
      anonymous_role: "none",
      jwt: { jwks_file: jwksFile, issuer: ISSUER, audience: AUDIENCE },
      tls: {
        cert_file: join(certs, "server.crt"),
        key_file: join(certs, "server.key"),
        client_ca_file: join(certs, "ca.crt"),
        require_client_cert: true,
      },
      // The units of `serve all` call each other through this same mTLS port.
      peer_tls: {
        enabled: true,
        ca_file: join(certs, "ca.crt"),
        cert_file: join(certs, "client-query.crt"),
        key_file: join(certs, "client-query.key"),
      },
      // Viewers get a small bucket, so a test can meet RESOURCE_EXHAUSTED + RetryInfo.
      rate_limits: { viewer: { requests_per_second: 0.1, burst: 3 } },
    },
  };
  // JSON is YAML.
  const file = join(directory, "config.yaml");
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

function serviceEnvironment(dsn: string): NodeJS.ProcessEnv {
  // The service's own settings only: ITS_* variables of the caller (CI, the pytest wrapper)
  // must not reconfigure it.
  const environment = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("ITS_")));
  return {
    ...environment,
    ITS_DATABASE__DSN: dsn,
    ITS_DECODER__SOURCE_KEYS: `k1:${randomBytes(32).toString("base64")}`,
  };
}

async function waitUntilServing(service: RunningService, child: ChildProcess, output: () => string): Promise<void> {
  const clients = connect(service.target, { tls: service.tls, maxAttempts: 2 });
  const deadline = Date.now() + START_TIMEOUT_MS;
  try {
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`its-camera-ai exited (${child.exitCode}):\n${output()}`);
      try {
        const { status } = await clients.health.check({ service: "" }, { timeoutMs: 1_000 });
        if (status === "SERVING") return;
      } catch {
        // Not listening yet.
      }
      await sleep(200);
    }
    throw new Error(`its-camera-ai not serving after ${START_TIMEOUT_MS} ms:\n${output()}`);
  } finally {
    clients.close();
  }
}

/** Starts the service; `stop()` ends it and drops its database. */
export async function startService(): Promise<RunningService> {
  const directory = mkdtempSync(join(tmpdir(), "its-node-client-"));
  const database = `its_node_${randomBytes(6).toString("hex")}`;
  psql(ADMIN_DSN, `CREATE DATABASE ${database}`);
  const dsn = dsnFor(database);

  execFileSync(SERVICE_BIN, ["certs", "--out", join(directory, "certs"), "--client", "query", "--client", "node"]);
  const certs = join(directory, "certs");
  const issuerKey = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const foreignKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
  const kid = `node-${randomBytes(4).toString("hex")}`;
  const jwk = { ...issuerKey.publicKey.export({ format: "jwk" }), kid, use: "sig", alg: "ES256" };
  const jwksFile = join(directory, "jwks.json");
  writeFileSync(jwksFile, JSON.stringify({ keys: [jwk] }));

  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const config = writeConfig(directory, grpcPort, httpPort, jwksFile);
  const child = spawn(SERVICE_BIN, ["serve", "all", "--config", config], {
    cwd: directory,
    env: serviceEnvironment(dsn),
    stdio: ["ignore", "pipe", "pipe"],
  });
  // A test process that dies without its after() hooks (a broken pipe, an uncaught error)
  // must not leave the service running.
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  child.on("exit", () => process.off("exit", killOnExit));
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);

  const service: RunningService = {
    target: `127.0.0.1:${grpcPort}`,
    tls: {
      ca: readFileSync(join(certs, "ca.crt")),
      cert: readFileSync(join(certs, "client-node.crt")),
      key: readFileSync(join(certs, "client-node.key")),
      // A name of the server certificate (it also has 127.0.0.1): TLS's SNI takes names only.
      serverName: "localhost",
    },
    token(role, options = {}) {
      const now = Math.floor(Date.now() / 1000);
      const lifetime = options.lifetimeS ?? 300;
      const claims = {
        iss: ISSUER,
        aud: AUDIENCE,
        sub: options.subject ?? `${role}-user`,
        role,
        iat: now,
        nbf: now,
        exp: now + lifetime,
      };
      return signJwt(claims, options.foreignKey ? foreignKey : issuerKey.privateKey, kid);
    },
    sql: (statement) => psql(dsn, statement),
    async stop() {
      if (child.exitCode === null) {
        const exited = once(child, "exit");
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      psql(ADMIN_DSN, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      rmSync(directory, { recursive: true, force: true });
    },
  };
  try {
    await waitUntilServing(service, child, () => output);
  } catch (error) {
    await service.stop();
    throw error;
  }
  return service;
}
