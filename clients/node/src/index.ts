// The ITS Camera AI client for Node: `connect()` gives promise-based, typed clients of
// every service; `paginate()` iterates List calls; failures are `ItsError`s.
export { type CallOptions, type PromiseClient, type ServerStream } from "./calls";
export { connect, type ConnectOptions, type ItsClients, type TlsOptions } from "./connect";
export {
  AbortedError,
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  type FieldViolation,
  InternalError,
  InvalidArgumentError,
  ItsError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  toItsError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
} from "./errors";
export { paginate } from "./pagination";
export { LOADER_OPTIONS, PROTO_ROOT, serviceDefinitions } from "./protos";
export {
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_UNARY_TIMEOUT_MS,
  retryableCodes,
  serviceConfig,
  type RetryOptions,
} from "./service-config";
