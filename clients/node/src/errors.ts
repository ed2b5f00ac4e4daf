// Typed errors: a failed call's status and the google.rpc.Status details the services send
// in `grpc-status-details-bin` (one ErrorInfo whose reason is an its.common.v1.ErrorReason
// name without its prefix; a BadRequest for INVALID_ARGUMENT; a RetryInfo when waiting
// helps). Clients branch on `code` + `reason` only.
import { join } from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protobuf from "protobufjs";

import type { Duration__Output } from "./generated/google/protobuf/Duration";
import type { BadRequest__Output } from "./generated/google/rpc/BadRequest";
import type { ErrorInfo__Output } from "./generated/google/rpc/ErrorInfo";
import type { RetryInfo__Output } from "./generated/google/rpc/RetryInfo";
import type { Status__Output } from "./generated/google/rpc/Status";
import { PROTO_ROOT } from "./protos";

const STATUS_DETAILS_KEY = "grpc-status-details-bin";
// The same shapes as the service messages (src/protos.ts LOADER_OPTIONS).
const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true };

function loadDetailTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => join(PROTO_ROOT, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  return {
    status: root.lookupType("google.rpc.Status"),
    errorInfo: root.lookupType("google.rpc.ErrorInfo"),
    badRequest: root.lookupType("google.rpc.BadRequest"),
    retryInfo: root.lookupType("google.rpc.RetryInfo"),
  };
}

const detailTypes = loadDetailTypes();

/** One bad field of a request (google.rpc.BadRequest.FieldViolation). */
export interface FieldViolation {
  /** Path of the field in the request, e.g. "camera.source_uri". */
  field: string;
  description: string;
  reason: string;
}

/**
 * A failed call: its gRPC status and what the service said about it. Each code the API
 * uses has its subclass (`NotFoundError`, ...); branch on the class or `code`, then on
 * `reason`, never on the message.
 */
export class ItsError extends Error {
  /** The gRPC status code (`grpc.status.NOT_FOUND`, ...). */
  readonly code: grpc.status;
  /** Name of the code: "NOT_FOUND", ... */
  readonly codeName: string;
  /** ErrorInfo reason, an ErrorReason without "ERROR_REASON_" ("RESOURCE_NOT_FOUND"). */
  readonly reason: string | undefined;
  /** ErrorInfo domain ("its-camera-ai.dev"). */
  readonly domain: string | undefined;
  /** ErrorInfo metadata ("resource", "field", "dependency", ...). */
  readonly errorMetadata: Readonly<Record<string, string>>;
  /** Every bad field of the request (INVALID_ARGUMENT). */
  readonly fieldViolations: readonly FieldViolation[];
  /** How long to wait before trying again (RetryInfo), in milliseconds. */
  readonly retryDelayMs: number | undefined;
  /** The server's message, without the code. */
  readonly details: string;
  /** The response trailers. */
  readonly trailers: grpc.Metadata;

  constructor(status: grpc.StatusObject) {
    const codeName = grpc.status[status.code] ?? String(status.code);
    super(`${codeName}: ${status.details}`);
    this.name = new.target.name;
    this.code = status.code;
    this.codeName = codeName;
    this.details = status.details;
    this.trailers = status.metadata;
    const details = decodeDetails(status.metadata);
    this.reason = details.errorInfo?.reason;
    this.domain = details.errorInfo?.domain;
    this.errorMetadata = details.errorInfo?.metadata ?? {};
    this.fieldViolations = (details.badRequest?.fieldViolations ?? []).map(({ field, description, reason }) => ({
      field,
      description,
      reason,
    }));
    const delay = details.retryInfo?.retryDelay;
    this.retryDelayMs = delay ? milliseconds(delay) : undefined;
  }
}

interface Details {
  errorInfo?: ErrorInfo__Output;
  badRequest?: BadRequest__Output;
  retryInfo?: RetryInfo__Output;
}

function milliseconds(duration: Duration__Output): number {
  return Number(duration.seconds) * 1000 + duration.nanos / 1e6;
}

function decodeDetails(trailers: grpc.Metadata): Details {
  const [encoded] = trailers.get(STATUS_DETAILS_KEY);
  if (!(encoded instanceof Buffer)) return {};
  try {
    return decodeStatus(decode<Status__Output>(detailTypes.status, encoded));
  } catch {
    // Details mangled on the way (a proxy): the status code and message still stand.
    return {};
  }
}

function decodeStatus(status: Status__Output): Details {
  const found: Details = {};
  for (const detail of status.details) {
    // "type.googleapis.com/google.rpc.ErrorInfo": the type is the last segment.
    const typeName = detail.type_url.slice(detail.type_url.lastIndexOf("/") + 1);
    if (typeName === "google.rpc.ErrorInfo") {
      found.errorInfo = decode<ErrorInfo__Output>(detailTypes.errorInfo, detail.value);
    } else if (typeName === "google.rpc.BadRequest") {
      found.badRequest = decode<BadRequest__Output>(detailTypes.badRequest, detail.value);
    } else if (typeName === "google.rpc.RetryInfo") {
      found.retryInfo = decode<RetryInfo__Output>(detailTypes.retryInfo, detail.value);
    }
  }
  return found;
}

function decode<T>(type: protobuf.Type, value: Uint8Array): T {
  return type.toObject(type.decode(value), TO_OBJECT) as T;
}

/** INVALID_ARGUMENT: `fieldViolations` lists every bad field. */
export class InvalidArgumentError extends ItsError {}
export class NotFoundError extends ItsError {}
export class AlreadyExistsError extends ItsError {}
export class FailedPreconditionError extends ItsError {}
/** ABORTED: a stale etag (ETAG_MISMATCH); read again and retry. */
export class AbortedError extends ItsError {}
export class OutOfRangeError extends ItsError {}
export class UnauthenticatedError extends ItsError {}
export class PermissionDeniedError extends ItsError {}
/** RESOURCE_EXHAUSTED: over a rate limit or quota; `retryDelayMs` says when to try again. */
export class ResourceExhaustedError extends ItsError {}
export class UnavailableError extends ItsError {}
export class DeadlineExceededError extends ItsError {}
export class InternalError extends ItsError {}
export class UnimplementedError extends ItsError {}

const ERROR_CLASSES: Partial<Record<grpc.status, new (status: grpc.StatusObject) => ItsError>> = {
  [grpc.status.INVALID_ARGUMENT]: InvalidArgumentError,
  [grpc.status.NOT_FOUND]: NotFoundError,
  [grpc.status.ALREADY_EXISTS]: AlreadyExistsError,
  [grpc.status.FAILED_PRECONDITION]: FailedPreconditionError,
  [grpc.status.ABORTED]: AbortedError,
  [grpc.status.OUT_OF_RANGE]: OutOfRangeError,
  [grpc.status.UNAUTHENTICATED]: UnauthenticatedError,
  [grpc.status.PERMISSION_DENIED]: PermissionDeniedError,
  [grpc.status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [grpc.status.UNAVAILABLE]: UnavailableError,
  [grpc.status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [grpc.status.INTERNAL]: InternalError,
  [grpc.status.UNIMPLEMENTED]: UnimplementedError,
};

function isStatusObject(error: unknown): error is grpc.StatusObject {
  return (
    typeof error === "object" &&
    error !== null &&
    typeof (error as grpc.StatusObject).code === "number" &&
    (error as grpc.StatusObject).metadata instanceof grpc.Metadata
  );
}

/**
 * `error` as an ItsError (the subclass of its code, e.g. NotFoundError) when it is a gRPC
 * status (a grpc-js ServiceError, as a raw stream emits it); anything else as it is.
 */
export function toItsError(error: unknown): unknown {
  if (error instanceof ItsError || !isStatusObject(error)) return error;
  const ErrorClass = ERROR_CLASSES[error.code] ?? ItsError;
  return new ErrorClass(error);
}
