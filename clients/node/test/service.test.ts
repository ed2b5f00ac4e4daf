// The client against the real service (its-camera-ai serve all, mTLS, JWTs, PostgreSQL):
// health, typed calls, pagination, a server stream, and the typed errors of refusals.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";

import {
  connect,
  InvalidArgumentError,
  ItsError,
  NotFoundError,
  paginate,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  type ItsClients,
} from "../src";
import type { Camera__Output } from "../src/generated/its/camera/v1/Camera";
import type { StreamEventsResponse__Output } from "../src/generated/its/query/v1/StreamEventsResponse";
import { startService, type RunningService } from "./service";

async function failure(call: Promise<unknown> | (() => Promise<unknown>)): Promise<ItsError> {
  try {
    await (typeof call === "function" ? call() : call);
  } catch (error) {
    assert.ok(error instanceof ItsError, `not an ItsError: ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

describe("the client against its-camera-ai serve all", () => {
  let service: RunningService;
  let admin: ItsClients;
  const opened: ItsClients[] = [];

  const clients = (options: Parameters<typeof connect>[1] = {}): ItsClients => {
    const made = connect(service.target, { tls: service.tls, ...options });
    opened.push(made);
    return made;
  };

  before(async () => {
    service = await startService();
    admin = clients({ token: service.token("admin") });
  });

  after(async () => {
    for (const made of opened) made.close();
    await service?.stop();
  });

  it("reads health over mTLS: the server and each service are SERVING", async () => {
    assert.equal((await admin.health.check({ service: "" })).status, "SERVING");
    const query = await admin.health.check({ service: "its.query.v1.QueryService" });
    assert.equal(query.status, "SERVING");
  });

  it("pages through ListCameras with the iterator, two cameras a page", async () => {
    const ids = ["page-a", "page-b", "page-c", "page-d", "page-e"];
    for (const cameraId of ids) {
      const { camera } = await admin.camera.createCamera({
        cameraId,
        camera: { sourceUri: "sim://road", enabled: false, displayName: `paged ${cameraId}` },
      });
      assert.equal(camera?.name, `cameras/${cameraId}`);
    }
    const pageTokens: string[] = [];
    const list = (request: { pageSize: number; filter: string; pageToken?: string }) => {
      pageTokens.push(request.pageToken ?? "");
      return admin.camera.listCameras(request);
    };
    const seen: Camera__Output[] = [];
    for await (const camera of paginate(
      list,
      { pageSize: 2, filter: 'display_name:"paged"' },
      (page) => page.cameras,
    )) {
      seen.push(camera);
    }
    assert.deepEqual(
      seen.map((camera) => camera.name),
      ids.map((id) => `cameras/${id}`),
    );
    // Three pages of 2, 2 and 1; the first without a token, the others each with one.
    assert.equal(pageTokens.length, 3);
    assert.equal(pageTokens[0], "");
    assert.ok(pageTokens.slice(1).every((token) => token.length > 0));
    assert.ok(seen.every((camera) => camera.enabled === false));
  });

  it("streams a stored event to StreamEvents and ends cleanly on cancel", async () => {
    const stream = admin.query.streamEvents({});
    const iterator = stream[Symbol.asyncIterator]();
    const first = iterator.next();
    // The stream goes live when the server has joined it, which no message announces:
    // store events until one arrives.
    let received: IteratorResult<StreamEventsResponse__Output> | undefined;
    void first.then((result) => {
      received = result;
    });
    for (let attempt = 0; received === undefined && attempt < 30; attempt += 1) {
      service.sql(
        "INSERT INTO analytics_events (event_id, camera_id, type, severity, start_time, end_time," +
          " track_id, object_class, lane_id, zone_id, evidence, description, details, update_time)" +
          ` VALUES ('node-${attempt}', 'stream-cam', 2, 4, now(), NULL, 7, 1, '', '', NULL,` +
          " 'wrong-way driver', '{}'::jsonb, now())",
      );
      await Promise.race([first, sleep(500)]);
    }
    const message = (await first).value as StreamEventsResponse__Output;
    assert.equal(message.changeType, "EVENT_CHANGE_TYPE_STARTED");
    assert.match(message.event?.name ?? "", /^cameras\/stream-cam\/events\//);
    assert.equal(message.event?.type, "EVENT_TYPE_WRONG_WAY");
    assert.equal(message.event?.severity, "SEVERITY_CRITICAL");
    assert.equal(message.event?.trackId, "7");
    assert.ok(message.resumeToken.length > 0);

    stream.cancel();
    // Whatever was already buffered may still come; then the iteration just ends.
    for (;;) {
      const next = await iterator.next();
      if (next.done) break;
    }
  });

  it("refuses a call without a credential: UNAUTHENTICATED with the server's reason", async () => {
    const anonymous = clients();
    const error = await failure(anonymous.camera.listCameras({}));
    assert.ok(error instanceof UnauthenticatedError);
    assert.equal(error.code, grpc.status.UNAUTHENTICATED);
    assert.equal(error.codeName, "UNAUTHENTICATED");
    assert.equal(error.reason, "UNAUTHENTICATED");
    assert.equal(error.domain, "its-camera-ai.dev");
  });

  it("fails a stream opened without a credential with the same typed error", async () => {
    const stream = clients().query.streamEvents({});
    const error = await failure(async () => {
      for await (const message of stream) assert.fail(`unexpected ${JSON.stringify(message)}`);
    });
    assert.equal(error.codeName, "UNAUTHENTICATED");
    assert.equal(error.reason, "UNAUTHENTICATED");
  });

  it("refuses a token of another issuer key and an expired one", async () => {
    const forged = await failure(
      clients({ token: service.token("admin", { foreignKey: true }) }).camera.listCameras({}),
    );
    assert.equal(forged.codeName, "UNAUTHENTICATED");
    assert.equal(forged.reason, "UNAUTHENTICATED");
    const expired = await failure(
      clients({ token: service.token("admin", { lifetimeS: -120 }) }).camera.listCameras({}),
    );
    assert.equal(expired.codeName, "UNAUTHENTICATED");
    assert.equal(expired.reason, "CREDENTIALS_EXPIRED");
  });

  it("refuses a client without a certificate (mTLS required)", async () => {
    const withoutCertificate = clients({ token: service.token("admin"), tls: { ca: service.tls.ca }, maxAttempts: 2 });
    const error = await failure(withoutCertificate.camera.listCameras({}, { timeoutMs: 5_000 }));
    assert.equal(error.codeName, "UNAVAILABLE");
  });

  it("decodes PERMISSION_DENIED, NOT_FOUND and INVALID_ARGUMENT with their details", async () => {
    const viewer = clients({ token: service.token("viewer", { subject: "reader" }) });
    const denied = await failure(viewer.camera.createCamera({ camera: { sourceUri: "sim://road" } }));
    assert.ok(denied instanceof PermissionDeniedError);
    assert.equal(denied.codeName, "PERMISSION_DENIED");
    assert.equal(denied.reason, "PERMISSION_DENIED");

    const missing = await failure(admin.camera.getCamera({ name: "cameras/nowhere" }));
    assert.ok(missing instanceof NotFoundError);
    assert.equal(missing.codeName, "NOT_FOUND");
    assert.equal(missing.reason, "RESOURCE_NOT_FOUND");
    assert.equal(missing.errorMetadata.resource, "cameras/nowhere");

    const invalid = await failure(
      admin.camera.createCamera({ cameraId: "Not_An_Id", camera: { sourceUri: "sim://road", enabled: false } }),
    );
    assert.ok(invalid instanceof InvalidArgumentError);
    assert.equal(invalid.codeName, "INVALID_ARGUMENT");
    assert.equal(invalid.reason, "INVALID_FIELD");
    assert.deepEqual(
      invalid.fieldViolations.map((violation) => violation.field),
      ["camera_id"],
    );
    assert.ok(invalid.fieldViolations[0]!.description.length > 0);
  });

  it("decodes RESOURCE_EXHAUSTED with the RetryInfo delay of the rate limit", async () => {
    const viewer = clients({ token: service.token("viewer", { subject: "busy-reader" }) });
    const limited = await failure(async () => {
      for (let call = 0; call < 10; call += 1) await viewer.camera.listCameras({ pageSize: 1 });
    });
    assert.ok(limited instanceof ResourceExhaustedError);
    assert.equal(limited.codeName, "RESOURCE_EXHAUSTED");
    assert.equal(limited.reason, "RATE_LIMITED");
    // A bucket refilled at 0.1 token/s: the next token is seconds away, never more than 10.
    assert.ok(limited.retryDelayMs !== undefined && limited.retryDelayMs > 0 && limited.retryDelayMs <= 10_000);
  });

  it("calls with an API key made through AdminService (x-api-key)", async () => {
    const { secret, apiKey } = await admin.admin.createApiKey({
      apiKey: { displayName: "node client", role: "ROLE_OPERATOR" },
    });
    assert.match(secret, /^itsk_/);
    const operator = clients({ apiKey: secret });
    const { cameras } = await operator.camera.listCameras({ pageSize: 1 });
    assert.equal(cameras.length, 1);
    await admin.admin.deleteApiKey({ name: apiKey?.name ?? "" });
  });
});
