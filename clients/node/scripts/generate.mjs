// Lays out the .proto files the client loads at run time (dist/proto) and generates their
// TypeScript types (src/generated) with @grpc/proto-loader's proto-loader-gen-types.
//
// Run by `npm run build` (and so by `npm test`): the repository's protos/ stays the one
// source, generated types can never be stale, and tsc then checks the hand-written client
// against the current contract.
//
// dist/proto holds protos/its and protos/google (the API, and the googleapis files vendored
// there) plus vendor/google/rpc (google.rpc.Status and its details, which neither
// proto-loader's include directories nor grpc-tools bundle). grpc.health.v1 comes from
// the grpc-health-check package. google/protobuf/* are protobufjs' own.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repositoryProtos = resolve(packageRoot, "../../protos");
const protoRoot = join(packageRoot, "dist/proto");
const generated = join(packageRoot, "src/generated");
const require = createRequire(import.meta.url);
const healthProtoRoot = resolve(dirname(require("grpc-health-check").protoPath), "../..");

function protoFiles(directory) {
  return readdirSync(directory).flatMap((entry) => {
    const path = join(directory, entry);
    if (statSync(path).isDirectory()) return protoFiles(path);
    return path.endsWith(".proto") ? [path] : [];
  });
}

rmSync(protoRoot, { recursive: true, force: true });
rmSync(generated, { recursive: true, force: true });
mkdirSync(protoRoot, { recursive: true });
cpSync(join(repositoryProtos, "its"), join(protoRoot, "its"), { recursive: true });
cpSync(join(repositoryProtos, "google"), join(protoRoot, "google"), { recursive: true });
cpSync(join(packageRoot, "vendor/google"), join(protoRoot, "google"), { recursive: true });
cpSync(join(healthProtoRoot, "health"), join(protoRoot, "grpc/health"), { recursive: true });

const sources = [
  ...protoFiles(join(protoRoot, "its")),
  ...protoFiles(join(protoRoot, "google/rpc")),
  ...protoFiles(join(protoRoot, "grpc")),
].map((path) => relative(protoRoot, path));

// These options must equal LOADER_OPTIONS in src/protos.ts: the types describe what the
// loader produces.
execFileSync(
  process.execPath,
  [
    require.resolve("@grpc/proto-loader/build/bin/proto-loader-gen-types.js"),
    // The files first: --includeDirs takes every value after it.
    ...sources,
    "--grpcLib=@grpc/grpc-js",
    "--longs=String",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--includeComments",
    `--outDir=${generated}`,
    `--includeDirs=${protoRoot}`,
  ],
  { cwd: protoRoot, stdio: "inherit" },
);
