// connect(): one channel to a server with the project's service config, the caller's
// credential on every call, TLS or mTLS, and a promise-based client per service.
import { readFileSync } from "node:fs";

import * as grpc from "@grpc/grpc-js";

import { promiseClient, type PromiseClient } from "./calls";
import type { AdminServiceClient } from "./generated/its/admin/v1/AdminService";
import type { AnalyticsServiceClient } from "./generated/its/analytics/v1/AnalyticsService";
import type { CameraServiceClient } from "./generated/its/camera/v1/CameraService";
import type { InferenceServiceClient } from "./generated/its/inference/v1/InferenceService";
import type { QueryServiceClient } from "./generated/its/query/v1/QueryService";
import type { HealthClient } from "./generated/grpc/health/v1/Health";
import { SERVICE_CONSTRUCTORS } from "./protos";
import { serviceConfig, type RetryOptions } from "./service-config";

/**
 * TLS towards the server. Each of `ca`, `cert`, `key` is PEM contents (a Buffer) or the
 * path of a PEM file (a string), read by `connect()`.
 */
export interface TlsOptions {
  /** CA bundle that signed the server's certificate; absent: the system's roots. */
  ca?: Buffer | string;
  /** Client certificate chain, for servers that require one (mTLS); needs `key`. */
  cert?: Buffer | string;
  /** Private key of `cert`. */
  key?: Buffer | string;
  /** Name to verify in the server's certificate when it differs from the host dialled. */
  serverName?: string;
}

export interface ConnectOptions extends RetryOptions {
  /** A JWT, sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** An API key (`itsk_...`), sent as `x-api-key` with every call. */
  apiKey?: string;
  /** TLS (and mTLS with `cert` + `key`); absent: plaintext (development on loopback). */
  tls?: TlsOptions;
  /** Further grpc-js channel options (they win over the defaults). */
  channelOptions?: grpc.ChannelOptions;
}

/** Promise-based clients of every service of the API, sharing one channel. */
export interface ItsClients {
  admin: PromiseClient<AdminServiceClient>;
  analytics: PromiseClient<AnalyticsServiceClient>;
  camera: PromiseClient<CameraServiceClient>;
  health: PromiseClient<HealthClient>;
  inference: PromiseClient<InferenceServiceClient>;
  query: PromiseClient<QueryServiceClient>;
  /** The channel the clients share. */
  channel: grpc.Channel;
  /** Closes the channel; calls in flight fail. */
  close(): void;
}

function pem(value: Buffer | string | undefined, field: string): Buffer | null {
  if (value === undefined || Buffer.isBuffer(value)) return value ?? null;
  try {
    return readFileSync(value);
  } catch (error) {
    throw new TypeError(`tls.${field}: cannot read ${value}: ${(error as NodeJS.ErrnoException).code}`);
  }
}

function channelCredentials(tls: TlsOptions | undefined): grpc.ChannelCredentials {
  if (tls === undefined) return grpc.credentials.createInsecure();
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    const missing = tls.key === undefined ? "key" : "cert";
    throw new TypeError(`tls.${missing}: a client certificate needs both cert and key`);
  }
  return grpc.credentials.createSsl(pem(tls.ca, "ca"), pem(tls.key, "key"), pem(tls.cert, "cert"));
}

/** The metadata that carries the credential; the server refuses a call with two. */
function credentialMetadata({ token, apiKey }: ConnectOptions): Array<[string, string]> {
  if (token && apiKey) throw new TypeError("token, apiKey: give one credential, not both");
  for (const [field, value] of [
    ["token", token],
    ["apiKey", apiKey],
  ] as const) {
    if (value !== undefined && (value.trim() === "" || value !== value.trim())) {
      throw new TypeError(`${field}: empty or surrounded by whitespace`);
    }
  }
  if (token) return [["authorization", `Bearer ${token}`]];
  if (apiKey) return [["x-api-key", apiKey]];
  return [];
}

// An interceptor rather than call credentials: grpc-js sends call credentials only over
// TLS, and the credential must also travel on plaintext loopback in development.
function credentialInterceptor(pairs: Array<[string, string]>): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        for (const [key, value] of pairs) metadata.set(key, value);
        next(metadata, listener);
      },
    });
}

// The servers' default message size limit: a lower one here would refuse answers the
// server may send (gRPC's own receive default is 4 MiB).
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

function channelOptions(options: ConnectOptions): grpc.ChannelOptions {
  const serverName = options.tls?.serverName;
  return {
    "grpc.service_config": serviceConfig(options),
    "grpc.enable_retries": 1,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    // Keepalive pings at the servers' own interval, never more often than the 10 s they
    // accept, also on a quiet Watch stream.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    ...(serverName === undefined ? {} : { "grpc.ssl_target_name_override": serverName }),
    ...options.channelOptions,
  };
}

/**
 * A channel to `target` ("host:port") and a promise-based client per service. Unary calls
 * get a 10 s deadline unless they set one; reads are retried on UNAVAILABLE and CANCELLED,
 * idempotent writes on UNAVAILABLE, up to 4 attempts with backoff (src/service-config.ts),
 * as the Python client does.
 */
export function connect(target: string, options: ConnectOptions = {}): ItsClients {
  if (target === "") throw new TypeError("target: empty (expected host:port)");
  const credentials = channelCredentials(options.tls);
  const pairs = credentialMetadata(options);
  const channel = new grpc.Channel(target, credentials, channelOptions(options));
  const clientOptions: grpc.ClientOptions = {
    channelOverride: channel,
    interceptors: pairs.length > 0 ? [credentialInterceptor(pairs)] : [],
  };
  const make = <C extends grpc.Client>(
    constructor: (new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C) & {
      service: grpc.ServiceDefinition;
    },
  ): PromiseClient<C> => promiseClient(new constructor(target, credentials, clientOptions), constructor.service);
  return {
    admin: make(SERVICE_CONSTRUCTORS.admin),
    analytics: make(SERVICE_CONSTRUCTORS.analytics),
    camera: make(SERVICE_CONSTRUCTORS.camera),
    health: make(SERVICE_CONSTRUCTORS.health),
    inference: make(SERVICE_CONSTRUCTORS.inference),
    query: make(SERVICE_CONSTRUCTORS.query),
    channel,
    close: () => channel.close(),
  };
}
