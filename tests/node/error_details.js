// A client in another language, built from the service's .proto files alone: makes the calls
// given as JSON and prints, for each, its status and the google.rpc.Status it decodes from the
// grpc-status-details-bin trailer (the details as plain objects, by type name).
//
//   node error_details.js TARGET PROTOS_DIR GOOGLEAPIS_DIR CALLS_JSON
//
// PROTOS_DIR holds tradeup/v1/*.proto; GOOGLEAPIS_DIR holds google/rpc/{status,error_details}.proto
// (the copies googleapis-common-protos ships). CALLS_JSON: [{"method", "request", "metadata"}].
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [target, protosDir, googleapisDir, callsJson] = process.argv.slice(2);
const CALL_SECONDS = 10;

const offers = grpc.loadPackageDefinition(protoLoader.loadSync("tradeup/v1/offers.proto", {
  keepCase: true, longs: Number, enums: String, defaults: false, oneofs: true, includeDirs: [protosDir],
})).tradeup.v1;

const rpc = new protobuf.Root();
// google/protobuf/*.proto come with protobufjs; the google/rpc ones from the given directory.
rpc.resolvePath = (origin, target) =>
  target.startsWith("google/protobuf/") ? target : path.join(googleapisDir, target);
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");

function decodeStatus(bytes) {
  const status = Status.decode(bytes);
  const details = {};
  for (const any of status.details) {
    const type = rpc.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
    details[type.fullName.slice(1)] = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
  }
  return { code: status.code, message: status.message, details };
}

function call(client, { method, request, metadata }) {
  const headers = new grpc.Metadata();
  for (const [key, value] of Object.entries(metadata || {})) headers.set(key, value);
  const deadline = new Date(Date.now() + CALL_SECONDS * 1000);
  return new Promise((resolve) => {
    client[method](request, headers, { deadline }, (err) => {
      if (!err) return resolve({ code: 0 });
      const [bytes] = err.metadata.get("grpc-status-details-bin");
      const [retryAfterMs] = err.metadata.get("retry-after-ms");
      resolve({
        code: err.code, message: err.details, retry_after_ms: retryAfterMs === undefined ? null : Number(retryAfterMs),
        status: bytes === undefined ? null : decodeStatus(bytes),
      });
    });
  });
}

async function main() {
  const client = new offers.OfferService(target, grpc.credentials.createInsecure());
  const results = [];
  for (const each of JSON.parse(callsJson)) results.push(await call(client, each));
  client.close();
  process.stdout.write(JSON.stringify(results) + "\n");
}

main().catch((err) => { console.error(err); process.exit(1); });
