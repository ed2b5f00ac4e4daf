// The channel connect() makes, against a real grpc-js server on loopback serving
// CameraService from the same definitions: retries, deadlines, the credential on every
// call, and option errors. The policy is compared with the Python client's own.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";

import {
  connect,
  InvalidArgumentError,
  ItsError,
  serviceConfig,
  serviceDefinitions,
  UnavailableError,
  type ItsClients,
} from "../src";

type Call = grpc.ServerUnaryCall<{ name?: string; cameraId?: string; camera?: { name?: string } }, unknown>;

/** CameraService whose methods fail as the camera's name says, counting attempts. */
class FlakyCameras {
  readonly attempts = new Map<string, number>();
  readonly credentials: string[] = [];

  private attempt(
    name: string,
    call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
  ): number {
    const count = (this.attempts.get(name) ?? 0) + 1;
    this.attempts.set(name, count);
    const metadata = call.metadata;
    this.credentials.push(String(metadata.get("authorization")[0] ?? metadata.get("x-api-key")[0] ?? ""));
    return count;
  }

  // "unavailable-N-x": UNAVAILABLE for the first N attempts; "cancelled-N-x": CANCELLED.
  private failure(name: string, attempt: number): grpc.ServiceError | null {
    const match = /^cameras\/(unavailable|cancelled|invalid)-(\d+)/.exec(name);
    if (match === null || attempt > Number(match[2])) return null;
    const code = {
      unavailable: grpc.status.UNAVAILABLE,
      cancelled: grpc.status.CANCELLED,
      invalid: grpc.status.INVALID_ARGUMENT,
    }[match[1] as "unavailable" | "cancelled" | "invalid"];
    return Object.assign(new Error(match[1]), { code, details: match[1], metadata: new grpc.Metadata() });
  }

  handlers(): grpc.UntypedServiceImplementation {
    const answer = (name: string, call: Call, callback: grpc.sendUnaryData<unknown>) => {
      callback(this.failure(name, this.attempt(name, call)), { camera: { name } });
    };
    return {
      GetCamera: (call: Call, callback: grpc.sendUnaryData<unknown>) => answer(call.request.name ?? "", call, callback),
      CreateCamera: (call: Call, callback: grpc.sendUnaryData<unknown>) =>
        answer(`cameras/${call.request.cameraId ?? ""}`, call, callback),
      UpdateCamera: (call: Call, callback: grpc.sendUnaryData<unknown>) =>
        answer(call.request.camera?.name ?? "", call, callback),
      DeleteCamera: (call: Call, callback: grpc.sendUnaryData<unknown>) =>
        answer(call.request.name ?? "", call, callback),
      // Never answers: only the deadline ends it.
      ListCameras: (call: Call) => {
        this.attempt("list", call);
      },
      // One message after a while, then open until cancelled.
      WatchCameraStatus: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        this.attempt("watch", call);
        setTimeout(() => call.write({ status: { name: "cameras/late/status" } }), 600);
      },
    };
  }
}

async function rejection(promise: Promise<unknown>): Promise<ItsError> {
  const error = await promise.then(
    () => assert.fail("the call succeeded"),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof ItsError, `not an ItsError: ${String(error)}`);
  return error;
}

describe("connect()'s channel", () => {
  const server = new grpc.Server();
  const cameras = new FlakyCameras();
  let target = "";
  let clients: ItsClients;

  before(async () => {
    server.addService(serviceDefinitions.camera, cameras.handlers());
    const port = await new Promise<number>((done, fail) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
        error ? fail(error) : done(bound),
      ),
    );
    target = `127.0.0.1:${port}`;
    clients = connect(target, { token: "a-token" });
  });

  after(() => {
    clients.close();
    server.forceShutdown();
  });

  it("retries UNAVAILABLE on reads and idempotent writes, sending the credential each time", async () => {
    const { camera } = await clients.camera.getCamera({ name: "cameras/unavailable-2-get" });
    assert.equal(camera?.name, "cameras/unavailable-2-get");
    assert.equal(cameras.attempts.get("cameras/unavailable-2-get"), 3);
    await clients.camera.updateCamera({
      camera: { name: "cameras/unavailable-1-update" },
      updateMask: { paths: ["*"] },
    });
    assert.equal(cameras.attempts.get("cameras/unavailable-1-update"), 2);
    await clients.camera.deleteCamera({ name: "cameras/unavailable-1-delete" });
    assert.equal(cameras.attempts.get("cameras/unavailable-1-delete"), 2);
    assert.ok(cameras.credentials.every((credential) => credential === "Bearer a-token"));
  });

  it("never retries a create, retries CANCELLED for reads only, and no other code", async () => {
    const create = await rejection(clients.camera.createCamera({ cameraId: "unavailable-1-create", camera: {} }));
    assert.ok(create instanceof UnavailableError);
    assert.equal(cameras.attempts.get("cameras/unavailable-1-create"), 1);
    await clients.camera.getCamera({ name: "cameras/cancelled-1-get" });
    assert.equal(cameras.attempts.get("cameras/cancelled-1-get"), 2);
    const write = await rejection(clients.camera.deleteCamera({ name: "cameras/cancelled-1-delete" }));
    assert.equal(write.codeName, "CANCELLED");
    assert.equal(cameras.attempts.get("cameras/cancelled-1-delete"), 1);
    const invalid = await rejection(clients.camera.getCamera({ name: "cameras/invalid-9" }));
    assert.ok(invalid instanceof InvalidArgumentError);
    assert.equal(cameras.attempts.get("cameras/invalid-9"), 1);
  });

  it("gives up after maxAttempts (4) with the last status", async () => {
    const error = await rejection(clients.camera.getCamera({ name: "cameras/unavailable-9" }));
    assert.equal(error.codeName, "UNAVAILABLE");
    assert.equal(error.reason, undefined);
    assert.equal(cameras.attempts.get("cameras/unavailable-9"), 4);
  });

  it("puts the default deadline on unary calls and none on streams", async () => {
    const hasty = connect(target, { unaryTimeoutMs: 300 });
    try {
      const started = Date.now();
      const error = await rejection(hasty.camera.listCameras({}));
      assert.equal(error.codeName, "DEADLINE_EXCEEDED");
      assert.ok(Date.now() - started < 3_000);
      for await (const message of hasty.camera.watchCameraStatus({})) {
        // Sent after twice the unary deadline: the stream was still open.
        assert.equal(message.status?.name, "cameras/late/status");
        break;
      }
    } finally {
      hasty.close();
    }
  });

  it("ends a server stream cleanly when its signal aborts", async () => {
    const aborted = new AbortController();
    const watch = clients.camera.watchCameraStatus({}, { signal: aborted.signal });
    setTimeout(() => aborted.abort(), 100);
    const received: unknown[] = [];
    // The server's first message would come at 600 ms: the loop ends before, without error.
    for await (const message of watch) received.push(message);
    assert.deepEqual(received, []);
  });

  it("sends an API key as x-api-key and cancels a unary call on its signal", async () => {
    const keyed = connect(target, { apiKey: "itsk_example" });
    try {
      await keyed.camera.getCamera({ name: "cameras/with-key" });
      assert.equal(cameras.credentials.at(-1), "itsk_example");
      const aborted = new AbortController();
      const call = keyed.camera.listCameras({}, { signal: aborted.signal, timeoutMs: 5_000 });
      await sleep(50);
      aborted.abort();
      assert.equal((await rejection(call)).codeName, "CANCELLED");
    } finally {
      keyed.close();
    }
  });

  it("names the option at fault", () => {
    assert.throws(() => connect("", {}), /^TypeError: target: empty/);
    assert.throws(() => connect(target, { token: "t", apiKey: "k" }), /^TypeError: token, apiKey: give one credential/);
    assert.throws(() => connect(target, { token: " t" }), /^TypeError: token: empty or surrounded by whitespace/);
    assert.throws(() => connect(target, { tls: { cert: Buffer.from("pem") } }), /^TypeError: tls\.key: a client/);
    assert.throws(
      () => connect(target, { tls: { ca: "/nowhere/ca.crt" } }),
      /^TypeError: tls\.ca: cannot read \/nowhere\/ca\.crt: ENOENT/,
    );
    assert.throws(() => serviceConfig({ maxAttempts: 0 }), /^RangeError: maxAttempts: an integer of at least 1, got 0/);
    assert.throws(() => serviceConfig({ unaryTimeoutMs: 0 }), /^RangeError: unaryTimeoutMs: above 0, got 0/);
  });
});

type Block = { name: Array<{ service: string; method: string }>; timeout?: string };

// The same methods in each block (in any order), the same policy, the same deadline.
function normalise(config: { methodConfig: Block[] }) {
  return config.methodConfig.map((block) => ({
    ...block,
    name: block.name.map(({ service, method }) => `${service}/${method}`).sort(),
    timeout: block.timeout && parseFloat(block.timeout),
  }));
}

describe("serviceConfig()", () => {
  // The venv beside the service command (ITS_CAMERA_AI_BIN or the repository's .venv).
  const bin = process.env.ITS_CAMERA_AI_BIN ?? resolve(__dirname, "../../../../.venv/bin/its-camera-ai");
  const python = join(dirname(bin), "python");

  it("is the Python client's policy, method for method", { skip: !existsSync(python) && `no ${python}` }, () => {
    const script =
      "import sys; from its_camera_ai.client import service_config as c; print(c(max_attempts=int(sys.argv[1])))";
    const pythonConfig = (attempts: number) =>
      JSON.parse(execFileSync(python, ["-c", script, String(attempts)], { encoding: "utf8" }));
    for (const maxAttempts of [4, 1]) {
      assert.deepEqual(normalise(JSON.parse(serviceConfig({ maxAttempts }))), normalise(pythonConfig(maxAttempts)));
    }
  });
});
