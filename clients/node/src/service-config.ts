// The gRPC service config every channel of the client carries: the Python client's policy
// (its_camera_ai_client.service_config), built the same way.
//
// gRPC retries an attempt only while no response headers arrived, so what is retried is
// the request, which may or may not have been applied:
// * reads (Get*, List*, server-streaming Watch*/Stream*) retry UNAVAILABLE and CANCELLED
//   (what a draining server answers the calls it received but never started,
//   grpc/grpc#41785): repeating a read is always harmless;
// * idempotent writes retry UNAVAILABLE: Update* (twice is once), Delete* (gone is gone)
//   and Detect (a pure function of the frame);
// * never retried: Create* (the protos have no request id: a repeated create that had been
//   applied is a second camera or API key), ResetCameraState (a repeat discards the state
//   built since the first) and the client stream StreamDetectionBatches (its producer
//   resends by sequence itself). A caller retrying a create passes an id and treats
//   ALREADY_EXISTS as done.
import type * as grpc from "@grpc/grpc-js";

import { serviceDefinitions } from "./protos";

/** Options of `serviceConfig()`; `connect()` takes the same ones. */
export interface RetryOptions {
  /** Deadline of unary calls that set none themselves (streams get none). Default 10 s. */
  unaryTimeoutMs?: number;
  /** Attempts per retryable call, the first included (gRPC caps it at 5); 1: no retries. Default 4. */
  maxAttempts?: number;
}

export const DEFAULT_UNARY_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_ATTEMPTS = 4;

const READ_PREFIXES = ["Get", "List", "Watch", "Stream"];
const IDEMPOTENT_WRITE_PREFIXES = ["Update", "Delete", "Detect"];

// The services of the API, in the Python client's order (health is gRPC's, not the API's).
const API_SERVICES = ["camera", "inference", "analytics", "query", "admin"] as const;

/** The status codes a call of `method` is retried on (none: not retried). */
export function retryableCodes(method: string, call: grpc.MethodDefinition<unknown, unknown>): string[] {
  if (call.requestStream) return [];
  if (READ_PREFIXES.some((prefix) => method.startsWith(prefix))) return ["UNAVAILABLE", "CANCELLED"];
  const idempotent = IDEMPOTENT_WRITE_PREFIXES.some((prefix) => method.startsWith(prefix));
  return idempotent && !call.responseStream ? ["UNAVAILABLE"] : [];
}

// All nine decimals: grpc-js 1.14 reads the fraction of "0.3s" as 3 nanoseconds (it takes
// the digits after the point as an integer count of nanoseconds).
function seconds(milliseconds: number): string {
  return `${(milliseconds / 1000).toFixed(9)}s`;
}

interface Block {
  streaming: boolean;
  codes: string[];
  name: Array<{ service: string; method: string }>;
}

function blocksOfMethods(): Block[] {
  const blocks = new Map<string, Block>();
  for (const service of API_SERVICES) {
    for (const [method, call] of Object.entries(serviceDefinitions[service])) {
      // path is "/its.camera.v1.CameraService/GetCamera".
      const serviceName = call.path.slice(1, call.path.lastIndexOf("/"));
      const streaming = call.requestStream || call.responseStream;
      const codes = retryableCodes(method, call);
      // Sorted as the Python client sorts its (streaming, codes) keys.
      const key = `${streaming ? 1 : 0}:${codes.join(",")}`;
      const block = blocks.get(key) ?? { streaming, codes, name: [] };
      block.name.push({ service: serviceName, method });
      blocks.set(key, block);
    }
  }
  return [...blocks.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, block]) => block);
}

/**
 * The service config JSON: one block per kind of method (unary or streaming, by the codes
 * it retries), unary ones with a deadline, none on streams (a watch lives as long as it
 * needs).
 */
export function serviceConfig(options: RetryOptions = {}): string {
  const unaryTimeoutMs = options.unaryTimeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS;
  const maxAttempts = options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
    throw new RangeError(`maxAttempts: an integer of at least 1, got ${maxAttempts}`);
  }
  if (!(unaryTimeoutMs > 0)) throw new RangeError(`unaryTimeoutMs: above 0, got ${unaryTimeoutMs}`);
  const methodConfig = blocksOfMethods().map(({ streaming, codes, name }) => ({
    name,
    ...(codes.length > 0 && maxAttempts > 1
      ? {
          retryPolicy: {
            maxAttempts,
            initialBackoff: "0.1s",
            maxBackoff: "2s",
            backoffMultiplier: 2,
            retryableStatusCodes: codes,
          },
        }
      : {}),
    ...(streaming ? {} : { timeout: seconds(unaryTimeoutMs) }),
  }));
  return JSON.stringify({ methodConfig });
}
