// The API's service definitions, loaded at run time from the .proto files that
// `npm run build` lays out in dist/proto (the repository's protos/, the vendored google.rpc
// files and grpc.health.v1).
import { join } from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType as AdminProto } from "./generated/admin_service";
import type { ProtoGrpcType as AnalyticsProto } from "./generated/analytics_service";
import type { ProtoGrpcType as CameraProto } from "./generated/camera_service";
import type { ProtoGrpcType as HealthProto } from "./generated/health";
import type { ProtoGrpcType as InferenceProto } from "./generated/inference_service";
import type { ProtoGrpcType as QueryProto } from "./generated/query_service";

/** Where the .proto files are: dist/proto, beside this module's dist/src. */
export const PROTO_ROOT = join(__dirname, "..", "proto");

/**
 * How messages look in JavaScript: camelCase fields, 64-bit integers as decimal strings
 * (as in the proto3 JSON mapping: no precision lost), enums by name, every scalar present
 * with its default, and the name of the set field of each oneof. scripts/generate.mjs
 * generates the types with the same options.
 */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

const SERVICE_FILES = [
  "its/camera/v1/camera_service.proto",
  "its/inference/v1/inference_service.proto",
  "its/analytics/v1/analytics_service.proto",
  "its/query/v1/query_service.proto",
  "its/admin/v1/admin_service.proto",
  "grpc/health/v1/health.proto",
];

type Loaded = CameraProto & InferenceProto & AnalyticsProto & QueryProto & AdminProto & HealthProto;

function load(): Loaded {
  const definition = protoLoader.loadSync(SERVICE_FILES, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition) as unknown as Loaded;
}

const loaded = load();

/** The client constructor of every service, under the name `connect()` gives its client. */
export const SERVICE_CONSTRUCTORS = {
  admin: loaded.its.admin.v1.AdminService,
  analytics: loaded.its.analytics.v1.AnalyticsService,
  camera: loaded.its.camera.v1.CameraService,
  health: loaded.grpc.health.v1.Health,
  inference: loaded.its.inference.v1.InferenceService,
  query: loaded.its.query.v1.QueryService,
} as const;

/** The API's gRPC service definitions (for servers, such as test doubles). */
export const serviceDefinitions = {
  admin: loaded.its.admin.v1.AdminService.service,
  analytics: loaded.its.analytics.v1.AnalyticsService.service,
  camera: loaded.its.camera.v1.CameraService.service,
  health: loaded.grpc.health.v1.Health.service,
  inference: loaded.its.inference.v1.InferenceService.service,
  query: loaded.its.query.v1.QueryService.service,
} as const;
