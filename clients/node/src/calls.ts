// Promise-based service clients over grpc-js' callback clients: unary calls return
// promises, server streams async iterables, and both fail with ItsError.
import * as grpc from "@grpc/grpc-js";

import { toItsError } from "./errors";

/** Per-call options of the promise-based clients. */
export interface CallOptions {
  /** Deadline of this call; unary calls default to the channel's (10 s), streams to none. */
  timeoutMs?: number;
  /** Metadata sent with this call besides the channel's credential. */
  metadata?: Readonly<Record<string, string>>;
  /** Cancels the call: a unary call then rejects with CANCELLED, a server stream ends. */
  signal?: AbortSignal;
}

/** A server stream: iterate it with `for await`; `cancel()` (or `break`) ends it cleanly. */
export interface ServerStream<T> extends AsyncIterable<T> {
  cancel(): void;
}

type GrpcClientMethods = keyof grpc.Client;

/**
 * The promise-based form of a generated grpc-js client interface: its camelCase methods,
 * unary ones returning promises, server-streaming ones ServerStreams; bidirectional streams
 * (detection producers) stay grpc-js duplex streams. Streams are matched first: a duplex
 * stream is structurally a ClientUnaryCall too.
 */
export type PromiseClient<C> = {
  [
    K in keyof C as K extends GrpcClientMethods
      ? never
      : K extends string
        ? K extends Uncapitalize<K>
          ? K
          : never
        : never
  ]: C[K] extends (options?: grpc.CallOptions) => grpc.ClientDuplexStream<infer Request, infer Response>
    ? (options?: CallOptions) => grpc.ClientDuplexStream<Request, Response>
    : C[K] extends (argument: infer Request, options?: grpc.CallOptions) => grpc.ClientReadableStream<infer Response>
      ? (request: Request, options?: CallOptions) => ServerStream<Response>
      : C[K] extends (argument: infer Request, callback: grpc.requestCallback<infer Response>) => grpc.ClientUnaryCall
        ? (request: Request, options?: CallOptions) => Promise<Response>
        : never;
};

function metadataOf(options: CallOptions): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(options.metadata ?? {})) metadata.set(key, value);
  return metadata;
}

function grpcOptions(options: CallOptions): grpc.CallOptions {
  return options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
}

function onAbort(signal: AbortSignal | undefined, cancel: () => void): void {
  if (signal === undefined) return;
  if (signal.aborted) cancel();
  else signal.addEventListener("abort", cancel, { once: true });
}

type Callback = (error: grpc.ServiceError | null, response?: unknown) => void;
type UnaryMethod = (
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: Callback,
) => grpc.ClientUnaryCall;
type StreamMethod = (
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
) => grpc.ClientReadableStream<unknown>;
type DuplexMethod = (metadata: grpc.Metadata, options: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, unknown>;

function unary(method: UnaryMethod) {
  return (request: unknown, options: CallOptions = {}): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const call = method(request, metadataOf(options), grpcOptions(options), (error, response) => {
        if (error) reject(toItsError(error));
        else resolve(response);
      });
      onAbort(options.signal, () => call.cancel());
    });
}

function serverStreaming(method: StreamMethod) {
  return (request: unknown, options: CallOptions = {}): ServerStream<unknown> => {
    const call = method(request, metadataOf(options), grpcOptions(options));
    let cancelled = false;
    const cancel = () => {
      cancelled = true;
      call.cancel();
    };
    onAbort(options.signal, cancel);
    // Listening from the start: a status that arrives before the consumer iterates is
    // neither lost (the stream would just end) nor an unhandled 'error' event.
    let failure: unknown;
    call.on("error", (error) => {
      failure ??= error;
    });
    async function* messages(): AsyncGenerator<unknown> {
      try {
        try {
          yield* call;
        } catch (error) {
          failure ??= error;
        }
        if (failure === undefined) return;
        // The CANCELLED status of our own cancel() ends the stream, not in an error.
        if (cancelled && (failure as grpc.ServiceError).code === grpc.status.CANCELLED) return;
        throw toItsError(failure);
      } finally {
        // A consumer that stopped iterating early (break, throw) no longer wants it.
        cancel();
      }
    }
    const iterator = messages();
    return { [Symbol.asyncIterator]: () => iterator, cancel };
  };
}

function duplex(method: DuplexMethod) {
  return (options: CallOptions = {}): grpc.ClientDuplexStream<unknown, unknown> => {
    const call = method(metadataOf(options), grpcOptions(options));
    onAbort(options.signal, () => call.cancel());
    return call;
  };
}

/** The promise-based form of `client` (a grpc-js client of a loaded service). */
export function promiseClient<C extends grpc.Client>(client: C, definition: grpc.ServiceDefinition): PromiseClient<C> {
  const methods: Record<string, unknown> = {};
  for (const [name, call] of Object.entries(definition)) {
    const camelName = name.charAt(0).toLowerCase() + name.slice(1);
    const method = (client as unknown as Record<string, Function>)[name]!.bind(client);
    if (!call.requestStream && !call.responseStream) methods[camelName] = unary(method as UnaryMethod);
    else if (!call.requestStream) methods[camelName] = serverStreaming(method as StreamMethod);
    else if (call.responseStream) methods[camelName] = duplex(method as DuplexMethod);
    // Client-only streams: the API has none.
  }
  return methods as PromiseClient<C>;
}
